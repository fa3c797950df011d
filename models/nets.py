"""Networks shared by the VAE and the GANs: the course's conv encoder/decoder for 28×28 images and MLPs for points.

One decoder class serves as the VAE decoder and the GAN generator (so a GAN can start from a trained VAE
decoder by loading its state dict), and one encoder class serves as the VAE encoder and the GAN
discriminator/critic (one output, LeakyReLU). None of them applies an output non-linearity: the VAE reads the
decoder's outputs as logit-space means or Bernoulli logits, the GAN generator maps them to images in [0,1] (a
sigmoid, or its VAE's inverse logit transform), the DCGAN discriminator's output is a logit for BCE-with-logits
and the WGAN critic's a raw score.
No batch norm anywhere: the WGAN-GP penalty needs per-example critic gradients, and the generator must hold
exactly the VAE decoder's parameters. Activations run in place: a convolution's or linear layer's backward does
not need its output, so rewriting it saves a fresh buffer.
"""
from __future__ import annotations

from functools import partial

from torch import nn

IMAGE_SIDE = 28  # two stride-2 convolutions: 28 → 14 → 7


class ConvEncoder(nn.Sequential):
    """x (N×1×28×28) → N×out_dim:
    Conv(1→w,4,2,1) → act → Conv(w→2w,4,2,1) → act → flatten → Linear(2w·7·7 → out_dim)."""

    def __init__(self, width: int, out_dim: int, activation: type[nn.Module] = nn.ReLU) -> None:
        side = IMAGE_SIDE // 4
        super().__init__(
            nn.Conv2d(1, width, 4, 2, 1), activation(inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1), activation(inplace=True),
            nn.Flatten(), nn.Linear(2 * width * side * side, out_dim),
        )
        self.width, self.out_dim = width, out_dim


class ConvDecoder(nn.Sequential):
    """z (N×q) → N×1×28×28 per-pixel outputs: Linear(q → 2w·7·7) → ReLU → ConvT(2w→w,4,2,1) → ReLU → ConvT(w→1,4,2,1).

    The VAE decoder and the GAN generator are both this class (no final sigmoid)."""

    def __init__(self, latent_dim: int, width: int) -> None:
        side = IMAGE_SIDE // 4
        super().__init__(
            nn.Linear(latent_dim, 2 * width * side * side), nn.ReLU(inplace=True),
            nn.Unflatten(1, (2 * width, side, side)),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, 1, 4, 2, 1),
        )
        self.latent_dim, self.width = latent_dim, width


def conv_discriminator(width: int) -> ConvEncoder:
    """The discriminator/critic: the encoder's architecture with one output and LeakyReLU(0.2) (DCGAN practice)."""
    return ConvEncoder(width, 1, activation=partial(nn.LeakyReLU, 0.2))


def mlp_net(in_dim: int, out_dim: int, width: int, hidden_layers: int,
            activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """MLP for points: `hidden_layers` hidden layers of `width` units with `activation` after each, linear output."""
    sizes = [in_dim, *[width] * hidden_layers, out_dim]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers[:-1])


def mlp_discriminator(in_dim: int, width: int, hidden_layers: int) -> nn.Sequential:
    return mlp_net(in_dim, 1, width, hidden_layers, activation=partial(nn.LeakyReLU, 0.2))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
