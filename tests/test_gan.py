"""GANs: building on every dataset kind, short runs through the training loop, weight clipping, the gradient
penalty against an independent per-example computation, VAE initialization and divergence records."""
import csv
import math
from types import SimpleNamespace

import pytest
import torch
from torch._dynamo.utils import counters

import models
from bench import datasets
from bench.train import CHECKPOINT, RunSpec, load_checkpoint, train
from conftest import needs_mnist
from core.errors import UserError
from models.gan import DCGAN, WGAN, WGANGP, WGANVAEInit
from models.vae import VAE

GANS = ["dcgan", "wgan", "wgan-gp"]
VAEINIT = ["dcgan-vaeinit", "wgan-vaeinit"]
LOOP = {"log_every": 1, "val_every": 100, "checkpoint_every": 1000, "val_size": 64}
FAKE_MNIST = SimpleNamespace(name="mnist", kind="image", train=torch.zeros(1, 1, 28, 28, dtype=torch.uint8),
                             info={"levels": 256})


def _small(name, kind):
    n_critic = models.get(name).defaults("moons")["n_critic"]
    return {"width": 8, "batch_size": 16 * n_critic} | ({"hidden_layers": 2} if kind == "points" else {})


def _last_row(run_dir):
    with open(run_dir / "train_log.csv") as fh:
        return list(csv.DictReader(fh))[-1]


def test_every_gan_builds_and_samples_on_moons():
    torch.manual_seed(0)
    for name in GANS:
        gan = models.create(name, datasets.load("moons"))
        assert gan.capabilities == {"sample"} and gan.family == "gan"
        s = gan.sample(32)
        assert s.shape == (32, 2) and torch.isfinite(s).all()
    for name in VAEINIT:
        assert models.get(name).requires == ("vae",)
        with pytest.raises(UserError, match="does not run on dataset 'moons'.*MNIST"):
            models.create(name, datasets.load("moons"))


@needs_mnist
def test_every_gan_builds_and_samples_in_unit_range_on_mnist():
    torch.manual_seed(0)
    mnist = datasets.load("mnist")
    for name in GANS + VAEINIT:
        gan = models.create(name, mnist, width=8)
        s = gan.sample(5)
        assert s.shape == (5, 1, 28, 28) and s.dtype == torch.float32 and 0 <= s.min() and s.max() <= 1
    assert models.create("dcgan", mnist).hparams["latent_dim"] == models.create("vae", mnist).hparams["latent_dim"]


def test_short_runs_through_the_training_loop_give_finite_losses(tmp_path):
    for name in GANS:
        spec = RunSpec.build(name, "moons", 0, {"steps": 3, **_small(name, "points")}, loop=LOOP)
        status = train(spec, tmp_path / name, progress=False)
        assert status == {"status": "ok"}, status
        row = _last_row(tmp_path / name)
        keys = ({"d_loss", "g_loss"} | ({"wasserstein"} if "wgan" in name else set())
                | ({"gp"} if name == "wgan-gp" else set()))
        assert keys <= set(row) and all(math.isfinite(float(row[k])) for k in keys), row


@needs_mnist
def test_vaeinit_runs_on_mnist_from_a_trained_vae_run(tmp_path):
    small = {"steps": 2, "width": 4, "batch_size": 16}
    assert train(RunSpec.build("vae", "mnist", 0, small, loop=LOOP), tmp_path / "vae", progress=False)["status"] == "ok"
    for name in ("dcgan", "wgan-vaeinit"):
        init = {"vae": str(tmp_path / "vae")} if name.endswith("vaeinit") else {}
        spec = RunSpec.build(name, "mnist", 0, {**small, "batch_size": 16 * (5 if "wgan" in name else 1)},
                             loop=LOOP, init_runs=init)
        assert train(spec, tmp_path / name, progress=False)["status"] == "ok"
        assert math.isfinite(float(_last_row(tmp_path / name)["g_loss"]))


def test_wgan_critic_weights_stay_within_the_clip():
    torch.manual_seed(0)
    gan = models.create("wgan", datasets.load("moons"), width=16, lr=0.5)  # steps far larger than the clip
    opts = gan.configure_optimizers()
    gan.train_step(torch.randn(40, 2), opts, 0)
    c = gan.hparams["clip"]
    biggest = max(p.abs().max().item() for p in gan.discriminator.parameters())
    assert biggest <= c and biggest == pytest.approx(c)  # the clip was active and holds
    assert max(p.abs().max().item() for p in gan.generator.parameters()) > c  # the generator is not clipped


@pytest.mark.parametrize("dataset", ["moons", "image"])
def test_gradient_penalty_matches_an_independent_per_example_computation(dataset):
    torch.manual_seed(0)
    if dataset == "moons":
        gan = models.create("wgan-gp", datasets.load("moons"), width=16)
        real, fake = torch.randn(6, 2), torch.randn(6, 2)
    else:
        gan = WGANGP(FAKE_MNIST, {**WGANGP.defaults("mnist"), "width": 4})
        real, fake = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    eps = torch.rand(len(real), *[1] * (real.dim() - 1))
    expected = []
    for i in range(len(real)):
        x_hat = (eps[i] * real[i] + (1 - eps[i]) * fake[i]).unsqueeze(0).requires_grad_(True)
        (g,) = torch.autograd.grad(gan.discriminator(x_hat).squeeze(), x_hat)
        expected.append((g.flatten().norm() - 1) ** 2)
    lam = gan.hparams["gp_weight"]
    assert lam == 10.0
    expected = lam * torch.stack(expected).mean()
    torch.testing.assert_close(lam * gan.gradient_penalty(real, fake, eps), expected)
    # the critic loss uses it with weight λ on top of −(mean D(real) − mean D(fake)), ε drawn per example
    torch.manual_seed(3)
    loss, logs = gan.critic_loss(real, fake)
    torch.manual_seed(3)
    eps = torch.rand(len(real), *[1] * (real.dim() - 1))
    w = gan.discriminator(real).mean() - gan.discriminator(fake).mean()
    torch.testing.assert_close(loss, -w + lam * gan.gradient_penalty(real, fake, eps))
    torch.testing.assert_close(logs["wasserstein"], w.detach())


@pytest.mark.parametrize("dataset", ["mnist", "binarized_mnist"])
def test_vaeinit_gan_starts_out_drawing_the_vaes_samples(dataset):
    """After init_from, the generator is the VAE decoder and maps its outputs to pixels as the VAE does (Gaussian
    decoder: from_logit with the VAE's α; Bernoulli: the sigmoid), so the same noise gives the VAE's mean-mode
    samples exactly. A plain sigmoid would put the mnist background at σ(logit(α)) ≈ α, not 0."""
    data = SimpleNamespace(**{**vars(FAKE_MNIST), "name": dataset})
    torch.manual_seed(0)
    vae = VAE(data, {**VAE.defaults(dataset), "width": 6})
    gan = WGANVAEInit(data, {**WGANVAEInit.defaults(dataset), "width": 6})
    assert gan.hparams["logit_alpha"] == (0.05 if dataset == "mnist" else 0.0)
    with torch.no_grad():
        vae.decoder[-1].bias.fill_(-2.9)  # logit(α + ...) of a black pixel, as a VAE trained on mnist outputs there
        torch.manual_seed(1)
        target = vae.sample(5)
        torch.manual_seed(1)
        assert not torch.allclose(gan.sample(5), target)
        gan.init_from({"vae": vae})
        torch.manual_seed(1)
        torch.testing.assert_close(gan.sample(5), target, rtol=0, atol=0)
    assert type(gan.generator) is type(vae.decoder)  # one shared class


def test_vaeinit_with_a_different_pixel_map_is_a_clear_error():
    vae = VAE(FAKE_MNIST, {**VAE.defaults("mnist"), "width": 6, "logit_alpha": 0.01})
    gan = WGANVAEInit(FAKE_MNIST, {**WGANVAEInit.defaults("mnist"), "width": 6})
    with pytest.raises(UserError, match="logit_alpha: vae 0.01 vs wgan-vaeinit 0.05.*VAE's latent_dim, width and "
                                        "logit_alpha"):
        gan.init_from({"vae": vae})


def test_vaeinit_with_a_different_latent_size_is_a_clear_error():
    vae = VAE(FAKE_MNIST, {**VAE.defaults("mnist"), "width": 6, "latent_dim": 3})
    gan = WGANVAEInit(FAKE_MNIST, {**WGANVAEInit.defaults("mnist"), "width": 6})
    with pytest.raises(UserError, match="latent_dim: vae 3 vs wgan-vaeinit 2.*VAE's latent_dim, width"):
        gan.init_from({"vae": vae})


def test_forced_divergence_is_a_status_record_not_an_exception(tmp_path):
    spec = RunSpec.build("dcgan", "moons", 0, {"steps": 20, "lr": 1e10, **_small("dcgan", "points")}, loop=LOOP)
    status = train(spec, tmp_path, progress=False)
    assert status["status"] == "diverged" and "non-finite" in status["reason"]
    assert load_checkpoint(tmp_path / CHECKPOINT)["status"]["status"] == "diverged"


def test_wgan_default_batch_gives_critic_minibatches_of_the_paper_size():
    for name, cls in (("wgan", WGAN), ("wgan-gp", WGANGP)):
        hp = cls.defaults("mnist")
        assert hp["n_critic"] == 5 and hp["batch_size"] // hp["n_critic"] == 64, name
    with pytest.raises(UserError, match="n_critic"):
        models.create("wgan", datasets.load("moons"), batch_size=3)


def test_losses_have_the_papers_signs():
    torch.manual_seed(0)
    real, fake = torch.randn(8, 2), torch.randn(8, 2) + 1
    dcgan = models.create("dcgan", datasets.load("moons"), width=16)
    d_real, d_fake = dcgan.discriminator(real), dcgan.discriminator(fake)
    expected = -torch.log(torch.sigmoid(d_real)).mean() - torch.log(1 - torch.sigmoid(d_fake)).mean()
    torch.testing.assert_close(dcgan.critic_loss(real, fake)[0], expected)
    torch.testing.assert_close(dcgan.generator_loss(d_fake), -torch.log(torch.sigmoid(d_fake)).mean())  # non-saturating
    wgan = models.create("wgan", datasets.load("moons"), width=16)
    d_real, d_fake = wgan.discriminator(real), wgan.discriminator(fake)
    loss, logs = wgan.critic_loss(real, fake)
    torch.testing.assert_close(loss, d_fake.mean() - d_real.mean())
    torch.testing.assert_close(logs["wasserstein"], (d_real.mean() - d_fake.mean()).detach())
    torch.testing.assert_close(wgan.generator_loss(d_fake), -d_fake.mean())


@pytest.mark.parametrize("name", ["dcgan", "wgan"])
def test_compiled_gan_training_logs_the_losses_eager_training_logs(name, tmp_path):
    """`training.compile` compiles the differentiated part of each update (`critic_update_loss`,
    `generator_objective`) and draws the noise outside it, so a compiled run trains the model an eager run trains:
    the logged losses agree to float rounding. WGAN-GP's penalty (a double backward) cannot be compiled."""
    def losses(run, **loop):
        spec = RunSpec.build(name, "moons", 0, {**_small(name, "points"), "steps": 6}, loop={**LOOP, **loop})
        assert train(spec, tmp_path / run, progress=False)["status"] == "ok"
        return [row[k] for row in load_checkpoint(tmp_path / run / CHECKPOINT)["log"] for k in ("d_loss", "g_loss")]

    counters.clear()
    eager = losses("eager")
    assert not counters["stats"]["unique_graphs"]
    compiled = losses("compiled", compile=True)
    assert counters["stats"]["unique_graphs"] >= 2  # both updates' objectives ran compiled
    assert len(compiled) == 12 and compiled == pytest.approx(eager, rel=1e-5, abs=1e-8)
    with pytest.raises(UserError, match="'wgan-gp' cannot train compiled"):
        RunSpec.build("wgan-gp", "moons", 0, loop={"compile": True})




def test_real_images_enter_the_discriminator_on_the_samples_unit_scale():
    """pixel / 255: black is 0 and white exactly 1, the range of the generator's pixels and of ds.to_float."""
    gan = DCGAN(FAKE_MNIST, {**DCGAN.defaults("mnist"), "width": 4})
    x = torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 28, 28)
    got = gan.to_model_space(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, x.float() / 255.0, rtol=0, atol=0)
    assert got.max().item() == 1.0


def test_train_step_logs_the_mean_over_critic_updates_and_one_chunk_of_generator_noise():
    """The logged d_loss and wasserstein are the averages over the n_critic critic updates of the step, and the
    generator update draws as many noise vectors as one critic chunk (module docstring)."""
    torch.manual_seed(0)
    # n_critic 5: chunks of 8
    gan = models.create("wgan", datasets.load("moons"), width=8, hidden_layers=2, batch_size=40)
    seen, gen_batch = [], []
    critic, objective = gan.critic_update_loss, gan.generator_objective

    def recording_critic(real, z):
        loss, extra = critic(real, z)
        seen.append((loss.item(), extra["wasserstein"].item(), len(real)))
        return loss, extra

    def recording_objective(z):
        gen_batch.append(len(z))
        return objective(z)

    gan.critic_update_loss, gan.generator_objective = recording_critic, recording_objective
    logs = gan.train_step(torch.randn(40, 2), gan.configure_optimizers(), 0)
    assert [n for *_, n in seen] == [8] * 5 and gen_batch == [8]
    d_losses, ws = [d for d, _, _ in seen], [w for _, w, _ in seen]
    assert max(d_losses) - min(d_losses) > 0  # distinct per-chunk values: a sum, or the last one, would differ
    assert logs["d_loss"].item() == pytest.approx(sum(d_losses) / 5, rel=1e-5, abs=1e-9)
    assert logs["wasserstein"].item() == pytest.approx(sum(ws) / 5, rel=1e-5, abs=1e-9)


def test_vaeinit_with_a_different_width_is_a_clear_error():
    vae = VAE(FAKE_MNIST, {**VAE.defaults("mnist"), "width": 6})
    gan = WGANVAEInit(FAKE_MNIST, {**WGANVAEInit.defaults("mnist"), "width": 8})
    with pytest.raises(UserError, match="width: vae 6 vs wgan-vaeinit 8.*VAE's latent_dim, width"):
        gan.init_from({"vae": vae})
