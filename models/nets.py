"""Networks shared by the VAE and the GANs: the course's conv encoder/decoder for 28×28 images and MLPs for points.

One decoder class serves as the VAE decoder and the GAN generator (so a GAN can start from a trained VAE
decoder by loading its state dict), and one encoder class serves as the VAE encoder and the GAN
discriminator/critic (one output, LeakyReLU). None of them applies an output non-linearity: the VAE reads the
decoder's outputs as logit-space means or Bernoulli logits, the GAN generator maps them to images in [0,1] (a
sigmoid, or its VAE's inverse logit transform), the DCGAN discriminator's output is a logit for BCE-with-logits
and the WGAN critic's a raw score.
No batch norm anywhere: the WGAN-GP penalty needs per-example critic gradients, and the generator must hold
exactly the VAE decoder's parameters. Activations run in place: a convolution's or linear layer's backward does
not need its output, and rewriting it saves a fresh buffer (2-3 % more VAE training steps/s on MNIST).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input, conv2d_weight

from models.base import linear, mlp

IMAGE_SIDE = 28  # two stride-2 convolutions: 28 → 14 → 7


@contextmanager
def _onednn_off() -> Iterator[None]:
    """CPU convolutions in the block run on ATen's own kernels (`torch.backends.mkldnn.flags` would also reset the
    TF32 setting, with a warning)."""
    onednn = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = onednn


def _ordinary_path(x: torch.Tensor) -> bool:
    """The one-channel layers' ATen kernels are a CPU eager-mode choice: other devices and compiled graphs run the
    ordinary layer."""
    return x.device.type != "cpu" or torch.compiler.is_compiling()


class _InputGradientOnATen(torch.autograd.Function):
    """conv2d whose input gradient runs with oneDNN off (ATen's own kernel); the rest as usual. Differentiable
    twice, as the WGAN-GP penalty needs."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = stride, padding, dilation
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        if need_x:
            with _onednn_off():
                grad_x = conv2d_input(x.shape, weight, grad, stride, padding, dilation)
        if need_weight:
            grad_weight = conv2d_weight(x, weight.shape, grad, stride, padding, dilation)
        if need_bias:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None


class OneChannelConv2d(nn.Conv2d):
    """nn.Conv2d from one input channel whose input gradient (a transposed convolution to one channel, the shape
    `OneChannelConvTranspose2d` is about) runs on CPU with ATen's kernel: 0.47 against oneDNN's 2.8 ms for 1 → 32
    channels at 28×28 → 14×14, batch 64, one thread. The GAN generator's step and the WGAN-GP penalty backpropagate
    through the discriminator's first layer into the images. The same parameters and function; an input that needs
    no gradient (the data, a VAE encoder's input), other devices and compiled graphs take the ordinary path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.in_channels != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("OneChannelConv2d takes one input channel, zero padding given as numbers")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad or _ordinary_path(x):
            return super().forward(x)
        return _InputGradientOnATen.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


class ConvEncoder(nn.Sequential):
    """x (N×1×28×28) → N×out_dim:
    Conv(1→w,4,2,1) → act → Conv(w→2w,4,2,1) → act → flatten → Linear(2w·7·7 → out_dim)."""

    def __init__(self, width: int, out_dim: int, activation: type[nn.Module] = nn.ReLU) -> None:
        side = IMAGE_SIDE // 4
        super().__init__(
            OneChannelConv2d(1, width, 4, 2, 1), activation(inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1), activation(inplace=True),
            nn.Flatten(), nn.Linear(2 * width * side * side, out_dim),
        )
        self.width, self.out_dim = width, out_dim


class OneChannelConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d to one output channel that runs on CPU with ATen's own kernel (im2col + GEMM) instead of
    oneDNN's, which is 3x slower for this shape: forward + backward 1.9 vs 6.0 ms for 32 → 1 channels at 14×14 → 28×28,
    batch 64, one thread; 12-13 % more VAE and DCGAN training steps/s on MNIST (timed interleaved). The same
    parameters and function; other devices and compiled graphs take the ordinary path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _ordinary_path(x):
            return super().forward(x)
        with _onednn_off():
            return super().forward(x)


class ConvDecoder(nn.Sequential):
    """z (N×q) → N×1×28×28 per-pixel outputs: Linear(q → 2w·7·7) → ReLU → ConvT(2w→w,4,2,1) → ReLU → ConvT(w→1,4,2,1).

    The VAE decoder and the GAN generator are both this class (no final sigmoid)."""

    def __init__(self, latent_dim: int, width: int) -> None:
        side = IMAGE_SIDE // 4
        super().__init__(
            linear(latent_dim, 2 * width * side * side), nn.ReLU(inplace=True),
            nn.Unflatten(1, (2 * width, side, side)),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(inplace=True),
            OneChannelConvTranspose2d(width, 1, 4, 2, 1),
        )
        self.latent_dim, self.width = latent_dim, width


def conv_discriminator(width: int) -> ConvEncoder:
    """The discriminator/critic: the encoder's architecture with one output and LeakyReLU(0.2) (DCGAN practice)."""
    return ConvEncoder(width, 1, activation=partial(nn.LeakyReLU, 0.2))


def mlp_net(in_dim: int, out_dim: int, width: int, hidden_layers: int,
            activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """MLP for points: `hidden_layers` hidden layers of `width` units, linear output."""
    return mlp([in_dim, *[width] * hidden_layers, out_dim], activation=activation)


def mlp_discriminator(in_dim: int, width: int, hidden_layers: int) -> nn.Sequential:
    return mlp_net(in_dim, 1, width, hidden_layers, activation=partial(nn.LeakyReLU, 0.2))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

