"""The image pieces every image model shares: the logit transform's value and log-Jacobian (models/images.py), and
the conv nets' parameter layout, which checkpoints and the VAE-initialized GANs rely on (models/nets.py)."""
import math

import pytest
import torch

from models.images import from_logit, to_logit
from models.nets import ConvDecoder, ConvEncoder, conv_discriminator, mlp_net


@pytest.mark.parametrize("alpha", [0.05, 1e-6])  # RealNVP/VAE/OT-Flow's and FFJORD's
def test_to_logit_matches_logit_and_autograd_log_det_and_loses_nothing_to_log1p(alpha):
    g = torch.Generator().manual_seed(0)
    y = torch.rand(8, 784, generator=g, dtype=torch.float64)
    y[:, :50], y[:, 50:100] = 0.0, 1.0 - 1e-9  # the ends of (0, 1), where log(1 − s) could lose accuracy
    y64 = y.clone().requires_grad_(True)
    expected_z = torch.logit(alpha + (1 - 2 * alpha) * y64)
    (dz_dy,) = torch.autograd.grad(expected_z.sum(), y64)  # elementwise map: the Jacobian is diagonal
    z, log_det = to_logit(y, alpha)
    torch.testing.assert_close(z, expected_z.detach(), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(log_det, dz_dy.log().sum(1), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(from_logit(z, alpha), y, rtol=0, atol=1e-9)
    # float32: log(1 − s) where the textbook form has log1p(−s), equally accurate (s itself is rounded to float32)
    s32 = alpha + (1 - 2 * alpha) * y.float()
    z32, log_det32 = to_logit(y.float(), alpha)
    torch.testing.assert_close(z32, torch.log(s32) - torch.log1p(-s32), rtol=0, atol=5e-7)
    torch.testing.assert_close(log_det32, (-torch.log(s32) - torch.log1p(-s32)).sum(1) + 784 * math.log(1 - 2 * alpha),
                               rtol=1e-6, atol=1e-3)


def test_nets_keep_their_state_dict_layout():
    """The names and shapes that trained checkpoints hold, and that a VAE-initialized GAN loads from the VAE decoder
    into its generator."""
    def layout(net):
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}

    assert layout(ConvDecoder(2, 4)) == {"0.weight": (392, 2), "0.bias": (392,), "3.weight": (8, 4, 4, 4),
                                         "3.bias": (4,), "5.weight": (4, 1, 4, 4), "5.bias": (1,)}
    encoder = {"0.weight": (4, 1, 4, 4), "0.bias": (4,), "2.weight": (8, 4, 4, 4), "2.bias": (8,), "5.bias": (3,)}
    assert layout(ConvEncoder(4, 3)) == {**encoder, "5.weight": (3, 392)}
    assert layout(conv_discriminator(4)) == {**encoder, "5.weight": (1, 392), "5.bias": (1,)}
    assert layout(mlp_net(2, 3, 8, 2)) == {"0.weight": (8, 2), "0.bias": (8,), "2.weight": (8, 8), "2.bias": (8,),
                                           "4.weight": (3, 8), "4.bias": (3,)}
