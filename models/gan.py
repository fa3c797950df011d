"""GANs sharing one training step: DCGAN (Radford et al. 2016), WGAN with weight clipping (Arjovsky et al. 2017),
WGAN-GP (Gulrajani et al. 2017), and the course's VAE-initialized variants (generator = trained VAE decoder).

Networks: on points, MLP generator and discriminator (3 hidden layers of 128, ReLU / LeakyReLU(0.2)); on MNIST
the course's conv generator, which IS the VAE decoder class (models/nets.py), followed by the map to pixels in
[0,1] `from_logit(out, logit_alpha)` (models/images.py): a sigmoid for logit_alpha = 0, the default; a VAE-initialized
generator takes its VAE's map, so that it starts out drawing exactly the VAE's (mean-mode) samples. The conv
discriminator mirrors the encoder (one output: a logit for DCGAN, a raw score for the WGAN critics). Real images
enter the discriminator on the same [0,1] scale (pixel / (levels − 1)).

One training step (`GAN.train_step`) = n_critic discriminator updates, then ONE generator update:
- the given batch of real data is split into n_critic consecutive chunks (`tensor_split`), one fresh real
  chunk per critic update, each against as many fresh fakes; the generator update uses as many noise vectors as
  the first chunk. So `batch_size` counts the real examples used per generator step: the WGAN defaults use
  batch_size = n_critic × 64, which gives the papers' critic minibatch of 64 and data never reused in a step.
- losses: DCGAN d = BCE(D(x), 1) + BCE(D(G(z)), 0), non-saturating g = BCE(D(G(z)), 1);
  WGAN d = mean D(G(z)) − mean D(x) (+ λ·GP for WGAN-GP), g = −mean D(G(z)); weight clipping to [−c, c] of
  every critic parameter after each critic update (WGAN); GP = mean_i (‖∇_x̂ D(x̂_i)‖₂ − 1)², x̂ = εx + (1−ε)G(z),
  ε ~ U[0,1] per example (WGAN-GP).
- logged: d_loss and (WGANs) wasserstein = mean D(x) − mean D(G(z)), both averaged over the critic updates of
  the step, gp (WGAN-GP) and g_loss. Noise comes from torch's global RNG (seeded by the loop).
Not reproduced: WGAN's schedule of 100 critic updates for the first 25 and every 500th generator iteration.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from core.errors import UserError
from core.names import IMAGE_DATASETS, TOY_DATASETS
from models import register
from models.base import HParam, Losses, Method
from models.images import from_logit
from models.nets import ConvDecoder, conv_discriminator, mlp_discriminator, mlp_net
from models.vae import VAE

CRITIC_BATCH = {"points": 256, "image": 64}


class GAN(Method):
    """The shared GAN: nets, sampling and the alternating step; subclasses set the losses and optimizers."""

    family = "gan"
    capabilities = frozenset({"sample"})
    compiled = ("critic_update_loss", "generator_objective")  # the differentiated part of each update
    hparam_spec = {"latent_dim": HParam(int, ge=1), "width": HParam(int, ge=1), "hidden_layers": HParam(int, ge=0),
                   "logit_alpha": HParam(float, ge=0, lt=0.5), "n_critic": HParam(int, ge=1)}  # α = 0: a sigmoid
    n_critic_default: ClassVar[int] = 1

    @classmethod
    def optimizer_defaults(cls) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def defaults(cls, dataset: str) -> dict[str, Any]:
        kind = "image" if dataset in IMAGE_DATASETS else "points"
        n_critic = cls.n_critic_default
        if kind == "image":  # latent = the VAE's q, so the generator can load a VAE decoder
            nets = {"latent_dim": 2, "width": 32, "logit_alpha": 0.0, "steps": 50_000}
        else:
            nets = {"latent_dim": 2, "width": 128, "hidden_layers": 3, "steps": 20_000}
        return {**nets, "n_critic": n_critic, "batch_size": n_critic * CRITIC_BATCH[kind], **cls.optimizer_defaults()}

    def __init__(self, dataset: Any, hparams: dict[str, Any]) -> None:
        super().__init__(dataset, hparams)
        self.image = len(self.data_shape) > 1
        w = hparams["width"]
        if hparams["batch_size"] < hparams["n_critic"]:  # n_critic >= 1: its HParam
            raise UserError(f"{self.name}: need 1 <= n_critic <= batch_size (the batch is split into n_critic "
                            f"critic minibatches), got n_critic={hparams['n_critic']}, "
                            f"batch_size={hparams['batch_size']}")
        if self.image:
            self.scale = float(dataset.info["levels"] - 1)
            self.generator = ConvDecoder(self.latent_dim, w)
            self.discriminator = conv_discriminator(w)
        else:
            dim = self.data_shape[0]
            self.generator = mlp_net(self.latent_dim, dim, w, hparams["hidden_layers"])
            self.discriminator = mlp_discriminator(dim, w, hparams["hidden_layers"])

    # --- generator -----------------------------------------------------------------------------------------
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """z → samples in data space (images: `from_logit` of the decoder-class output, in [0,1])."""
        out = self.generator(z)
        return from_logit(out, self.hparams["logit_alpha"]) if self.image else out

    def sample(self, n: int) -> torch.Tensor:
        with torch.no_grad():
            return self.generate(torch.randn(n, self.latent_dim, device=self.device))

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / self.scale if self.image else x

    # --- losses (subclasses) -------------------------------------------------------------------------------
    def critic_loss(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_critic_step(self) -> None:
        pass

    # --- the one training step -----------------------------------------------------------------------------
    def critic_update_loss(self, real: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`critic_loss` of a real chunk against fakes from the noise `z`, generated without gradients."""
        with torch.no_grad():
            fake = self.generate(z)
        return self.critic_loss(real, fake)

    def generator_objective(self, z: torch.Tensor) -> torch.Tensor:
        """`generator_loss` of the critic's scores of fakes from the noise `z`."""
        return self.generator_loss(self.discriminator(self.generate(z)))

    def train_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer], step: int) -> Losses:
        opt_d, opt_g = optimizers["d"], optimizers["g"]
        chunks = self.to_model_space(x).tensor_split(self.hparams["n_critic"])
        logs: Losses = {}
        for real in chunks:
            z = torch.randn(len(real), self.latent_dim, device=real.device)
            opt_d.zero_grad(set_to_none=True)
            d_loss, extra = self.critic_update_loss(real, z)
            d_loss.backward()
            opt_d.step()
            self.after_critic_step()
            for k, v in {"d_loss": d_loss, **extra}.items():
                logs[k] = logs.get(k, 0.0) + v.detach() / len(chunks)
        opt_g.zero_grad(set_to_none=True)
        self.discriminator.requires_grad_(False)  # the generator step needs no critic parameter gradients
        try:
            g_loss = self.generator_objective(torch.randn(len(chunks[0]), self.latent_dim, device=x.device))
            g_loss.backward()
        finally:
            self.discriminator.requires_grad_(True)
        opt_g.step()
        return {**logs, "g_loss": g_loss}


class _Adam:
    """Mixin: Adam for both networks with lr, beta1, beta2 from the hyper-parameters (fused, as `Method`'s)."""

    hparam_spec = {"beta1": HParam(float, ge=0, lt=1), "beta2": HParam(float, ge=0, lt=1)}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        hp = self.hparams
        return {name: torch.optim.Adam(net.parameters(), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                       weight_decay=hp["weight_decay"], fused=True)
                for name, net in (("d", self.discriminator), ("g", self.generator))}


@register("dcgan")
class DCGAN(_Adam, GAN):
    """Non-saturating GAN with BCE-with-logits; Adam 2e-4, β = (0.5, 0.999) (Radford et al. 2016)."""

    @classmethod
    def optimizer_defaults(cls) -> dict[str, Any]:
        return {"lr": 2e-4, "beta1": 0.5, "beta2": 0.999, "weight_decay": 0.0}

    def critic_loss(self, real, fake):
        d_real, d_fake = self.discriminator(real), self.discriminator(fake)
        loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
        return loss, {}

    def generator_loss(self, fake_scores):
        return F.binary_cross_entropy_with_logits(fake_scores, torch.ones_like(fake_scores))


@register("wgan")
class WGAN(GAN):
    """Wasserstein GAN with weight clipping: RMSprop 5e-5, clip 0.01, n_critic 5 (Arjovsky et al. 2017)."""

    n_critic_default = 5
    hparam_spec = {"clip": HParam(float, gt=0)}

    @classmethod
    def optimizer_defaults(cls) -> dict[str, Any]:
        return {"lr": 5e-5, "clip": 0.01, "weight_decay": 0.0}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        hp = self.hparams
        return {name: torch.optim.RMSprop(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
                for name, net in (("d", self.discriminator), ("g", self.generator))}

    def critic_loss(self, real, fake):
        w = self.discriminator(real).mean() - self.discriminator(fake).mean()
        return -w, {"wasserstein": w.detach()}

    def generator_loss(self, fake_scores):
        return -fake_scores.mean()

    @torch.no_grad()
    def after_critic_step(self) -> None:
        c = self.hparams["clip"]
        for p in self.discriminator.parameters():
            p.clamp_(-c, c)


@register("wgan-gp")
class WGANGP(_Adam, WGAN):
    """WGAN with gradient penalty λ = 10 instead of clipping: Adam 1e-4, β = (0.5, 0.9), n_critic 5
    (Gulrajani et al. 2017, their gan_toy.py / gan_mnist.py settings)."""

    compiled = ()  # the penalty's double backward is beyond torch.compile's autograd
    hparam_spec = {"gp_weight": HParam(float, ge=0)}

    @classmethod
    def optimizer_defaults(cls) -> dict[str, Any]:
        return {"lr": 1e-4, "beta1": 0.5, "beta2": 0.9, "gp_weight": 10.0, "weight_decay": 0.0}

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """mean_i (‖∇_x̂ D(x̂_i)‖₂ − 1)² at x̂ = ε·real + (1−ε)·fake (without the weight λ)."""
        if eps is None:
            eps = torch.rand(len(real), *[1] * (real.dim() - 1), device=real.device, dtype=real.dtype)
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator(x_hat).sum(), x_hat, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def critic_loss(self, real, fake):
        w = self.discriminator(real).mean() - self.discriminator(fake).mean()
        gp = self.gradient_penalty(real, fake)
        return -w + self.hparams["gp_weight"] * gp, {"wasserstein": w.detach(), "gp": gp.detach()}

    def after_critic_step(self) -> None:  # no clipping
        pass


class _VAEInit:
    """Mixin: the generator starts from the trained VAE decoder of the same dataset and seed (course scripts)."""

    requires = ("vae",)
    unsupported = {name: "VAE-initialized GANs are the course's MNIST experiment (the conv VAE decoder is loaded into "
                         "the conv generator); on 2-D points the VAE decoder is a Gaussian MLP, not a GAN generator"
                   for name in TOY_DATASETS}

    @classmethod
    def defaults(cls, dataset: str) -> dict[str, Any]:
        hp = super().defaults(dataset)
        if dataset in IMAGE_DATASETS:
            hp["logit_alpha"] = VAE.pixel_alpha(VAE.defaults(dataset))
        return hp

    @classmethod
    def check_start(cls, hparams: dict[str, Any], required: dict[str, dict[str, Any]]) -> None:
        vae = required["vae"]
        theirs = {"latent_dim": vae.get("latent_dim"), "width": vae.get("width"), "logit_alpha": VAE.pixel_alpha(vae)}
        mismatch = {k: (v, hparams[k]) for k, v in theirs.items() if v != hparams[k]}
        if mismatch:
            detail = ", ".join(f"{k}: vae {a} vs {cls.name} {b}" for k, (a, b) in mismatch.items())
            raise UserError(f"{cls.name} loads the VAE decoder into its generator, but the VAE's decoder does not fit "
                            f"({detail}); give the GAN the VAE's latent_dim, width and logit_alpha (0 for a Bernoulli "
                            f"decoder)")

    def init_from(self, trained: dict[str, Method]) -> None:
        self.check_start(self.hparams, {"vae": trained["vae"].hparams})
        self.generator.load_state_dict(trained["vae"].decoder.state_dict())


@register("dcgan-vaeinit")
class DCGANVAEInit(_VAEInit, DCGAN):
    pass


@register("wgan-vaeinit")
class WGANVAEInit(_VAEInit, WGAN):
    pass
