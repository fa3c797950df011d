"""The image pieces every image model shares: the logit transform's value and log-Jacobian (models/images.py), and
the conv nets' one-channel layers, whose CPU kernels differ from the ordinary layers' (models/nets.py)."""
import copy
import math

import pytest
import torch
from torch import nn

from models.images import from_logit, to_logit
from models.nets import ConvDecoder, ConvEncoder, OneChannelConv2d, OneChannelConvTranspose2d, mlp_net


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


@pytest.mark.parametrize("frozen", [False, True])
def test_one_channel_conv_has_the_ordinary_layers_gradients_to_second_order(frozen):
    """OneChannelConv2d against nn.Conv2d, for an input that needs a gradient (an input that needs none takes the
    ordinary path): output, first-order gradients (with the parameters frozen, as in the GAN generator's step
    through the discriminator) and the second-order ones that the WGAN-GP penalty backpropagates (float64: exact
    to rounding)."""
    torch.manual_seed(0)
    ours, plain = OneChannelConv2d(1, 6, 4, 2, 1).double(), nn.Conv2d(1, 6, 4, 2, 1).double()
    plain.load_state_dict(ours.state_dict())
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64, requires_grad=True)
    for layer in (ours, plain):
        layer.requires_grad_(not frozen)
    onednn = torch.backends.mkldnn.enabled

    def grads(layer):
        y = layer(x)
        wrt = [t for t in (x, *layer.parameters()) if t.requires_grad]
        first = torch.autograd.grad(y.pow(2).sum(), wrt, create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in first), wrt)
        return y, first, second

    got, want = grads(ours), grads(plain)
    assert type(got[0].grad_fn).__name__ == "_InputGradientOnATenBackward" and torch.backends.mkldnn.enabled == onednn
    for a, b in zip([got[0], *got[1], *got[2]], [want[0], *want[1], *want[2]], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert isinstance(ConvEncoder(4, 2)[0], OneChannelConv2d)


def test_one_channel_conv_transpose_is_the_ordinary_layer_and_restores_onednn():
    torch.manual_seed(0)
    ours = OneChannelConvTranspose2d(8, 1, 4, 2, 1)  # float32, which the plain layer runs through oneDNN
    plain = nn.ConvTranspose2d(8, 1, 4, 2, 1)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(5, 8, 14, 14, requires_grad=True)
    grad_out = torch.randn(5, 1, 28, 28)
    onednn = torch.backends.mkldnn.enabled
    got = ours(x)
    assert torch.backends.mkldnn.enabled == onednn
    got_grads = torch.autograd.grad(got, [x, *ours.parameters()], grad_out)
    want = plain(x)
    want_grads = torch.autograd.grad(want, [x, *plain.parameters()], grad_out)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert list(ConvDecoder(2, 4).state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias", "5.weight", "5.bias"]


@pytest.mark.parametrize("net", ["decoder", "mlp"])
def test_widening_layers_are_column_major_through_loading_and_copies_with_the_same_weight_gradient(net):
    """models.base.linear: a layer with fewer inputs than outputs (the conv decoder's first, an MLP's first on 2-D
    data) keeps its weight column-major, the layout its fast backward needs, in a model that loads another's
    state_dict, a deep copy and a moved copy; a narrowing layer stays row-major. The function and the weight's
    gradient are nn.Linear's bit for bit, the input's gradient agrees to float rounding."""
    torch.manual_seed(0)
    build = {"decoder": lambda: ConvDecoder(2, 4), "mlp": lambda: mlp_net(2, 2, 64, 2)}[net]
    model, loaded = build(), build()
    loaded.load_state_dict(model.state_dict())
    first, last = model[0], [m for m in model if isinstance(m, nn.Linear)][-1]
    for m in (model, loaded, copy.deepcopy(model), copy.deepcopy(model).double()):
        assert m[0].weight.stride() == (1, m[0].out_features)
    assert net == "decoder" or last.weight.stride() == (last.in_features, 1)
    plain = nn.Linear(first.in_features, first.out_features)
    plain.load_state_dict(first.state_dict())
    assert plain.weight.stride() == (2, 1)
    z, grad_out = torch.randn(8, 2, requires_grad=True), torch.randn(8, first.out_features)
    got, want = first(z), plain(z)
    assert torch.equal(got, want)
    got_grads = torch.autograd.grad(got, [z, first.weight], grad_out)
    want_grads = torch.autograd.grad(want, [z, plain.weight], grad_out)
    assert torch.equal(got_grads[1], want_grads[1])
    torch.testing.assert_close(got_grads[0], want_grads[0], rtol=1e-5, atol=1e-5)
