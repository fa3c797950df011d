"""Reference training steps: the original course implementation's recipe, written out plainly (no tuning).

Each builder returns a zero-argument `step()` that does one complete training step the way the course scripts
(EmoryMLIP/DeepGenerativeModelingIntro: trainRealNVP.py, trainOTFlow.py with OT-Flow's OTFlowProblem,
trainVAEmnist.py, trainDCGANmnist.py) do it, data included:
- 2-D flows draw a fresh batch every step with `sklearn.datasets.make_moons(batch, noise=0.05)`;
- MNIST models iterate a torchvision `DataLoader(MNIST(transform=ToTensor()), shuffle=True)`, which builds each
  image with PIL and `ToTensor` one at a time and collates the batch;
- optimizers are PyTorch's default Adam (the per-parameter loop on CPU) with the course's settings.
Architectures follow the course: RealNVP couplings with separate s and t MLPs (Tanh outputs), a
MultivariateNormal prior and the flow's stored intermediate states; OT-Flow's Φ with its analytic gradient and
Hessian trace, integrated by RK4 on the concatenated state [x, ℓ, L, R]; the MNIST generator/encoder/
discriminator with batch norm, sigmoid outputs and BCE. Widths and batch sizes are the suite's defaults for the
same method (the suite's resolved hyper-parameters, learning rates included), so a ratio measures the
implementation, not the model size. Per-step diagnostics the course
scripts also compute (DCGAN's epsTest, plotting) are left out: they would only slow the reference down.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import distributions, nn

Step = Callable[[], None]


def _moons_batch(batch_size: int, device: torch.device) -> torch.Tensor:
    from sklearn.datasets import make_moons

    return torch.tensor(make_moons(n_samples=batch_size, noise=0.05)[0], dtype=torch.float32).to(device)


# --- RealNVP on moons -------------------------------------------------------------------------------------------
class _Coupling(nn.Module):
    def __init__(self, width: int, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask = mask

        def net() -> nn.Sequential:
            return nn.Sequential(nn.Linear(2, width), nn.LeakyReLU(), nn.Linear(width, width), nn.LeakyReLU(),
                                 nn.Linear(width, 2), nn.Tanh())

        self.s, self.t = net(), net()

    def finv(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y1 = self.mask * y
        s, t = self.s(y1) * (1 - self.mask), self.t(y1)
        return y1 + (1 - self.mask) * (y - t) * torch.exp(-s), -s.sum(1)


class _RealNVP(nn.Module):
    def __init__(self, n_layers: int, width: int, device: torch.device) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Coupling(width, torch.tensor([1.0 - k % 2, float(k % 2)], device=device))
                                    for k in range(n_layers))
        self.prior = distributions.MultivariateNormal(torch.zeros(2, device=device), torch.eye(2, device=device))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        p, log_det, states = x, torch.zeros(len(x), device=x.device), [x.clone().detach()]
        for layer in reversed(self.layers):
            p, ld = layer.finv(p)
            states.append(p.clone().detach())  # the course's flow keeps every intermediate state
            log_det = log_det + ld
        return self.prior.log_prob(p) + log_det


def realnvp_moons(device: torch.device, hp: dict[str, Any], data_root: Path | None = None) -> Step:
    flow = _RealNVP(hp["n_layers"], hp["width"], device).to(device)
    opt = torch.optim.Adam(flow.parameters(), lr=hp["lr"])

    def step() -> None:
        x = _moons_batch(hp["batch_size"], device)
        loss = -flow.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    return step


# --- OT-Flow on moons -------------------------------------------------------------------------------------------
def _act(x: torch.Tensor) -> torch.Tensor:
    return torch.abs(x) + torch.log(1 + torch.exp(-2.0 * torch.abs(x)))


class _Phi(nn.Module):
    """Φ(s) = wᵀN(s) + ½ sᵀAᵀAs + bᵀs + c with a two-layer ResNet N (OT-Flow's toy network)."""

    def __init__(self, d: int, m: int, rank: int = 10) -> None:
        super().__init__()
        self.d, self.m = d, m
        self.A = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(min(rank, d + 1), d + 1)))
        self.c = nn.Linear(d + 1, 1)
        self.w = nn.Linear(m, 1, bias=False)
        self.K0, self.K1 = nn.Linear(d + 1, m), nn.Linear(m, m)
        nn.init.ones_(self.w.weight)
        nn.init.zeros_(self.c.weight)
        nn.init.zeros_(self.c.bias)

    def grad_trace(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """∇ₛΦ and tr(∇ₓ²Φ) as OT-Flow's Phi.trHess computes them (column-major intermediates)."""
        d, m, n = self.d, self.m, len(s)
        sym = self.A.t() @ self.A
        opening = self.K0(s)
        u0 = _act(opening)
        pre1 = self.K1(u0)
        z1 = self.w.weight.t() + torch.mm(self.K1.weight.t(), torch.tanh(pre1).t() * self.w.weight.t())
        tanh_open = torch.tanh(opening)
        grad = torch.mm(self.K0.weight.t(), tanh_open.t() * z1) + torch.mm(sym, s.t()) + self.c.weight.t()
        k_open = self.K0.weight[:, :d]
        temp = (1 - torch.tanh(opening.t()).pow(2)) * z1
        tr = torch.sum(temp.reshape(m, -1, n) * torch.pow(k_open.unsqueeze(2), 2), dim=(0, 1))
        jac = k_open.unsqueeze(2) * tanh_open.t().unsqueeze(1)
        kj = torch.mm(self.K1.weight, jac.reshape(m, -1)).reshape(m, -1, n)
        dtanh1 = (1 - torch.tanh(pre1.t()).pow(2)) * self.w.weight.t()
        t1 = torch.sum(dtanh1.reshape(m, -1, n) * kj.pow(2), dim=(0, 1))
        return grad.t(), tr + t1 + torch.trace(sym[:d, :d])


def _otflow_rhs(state: torch.Tensor, t: float, phi: _Phi) -> torch.Tensor:
    d = state.shape[1] - 3
    grad, tr = phi.grad_trace(F.pad(state[:, :d], (0, 1, 0, 0), value=t))
    dx = -grad[:, :d]
    dl = -tr.unsqueeze(1)
    dv = 0.5 * torch.sum(dx.pow(2), 1, keepdim=True)
    dr = torch.abs(-grad[:, -1].unsqueeze(1) + dv)
    return torch.cat((dx, dl, dv, dr), 1)


def otflow_moons(device: torch.device, hp: dict[str, Any], data_root: Path | None = None) -> Step:
    phi = _Phi(2, hp["width"]).to(device)
    opt = torch.optim.Adam(phi.parameters(), lr=hp["lr"])
    nt, alpha = hp["nt"], hp["alpha"]

    def step() -> None:
        x = _moons_batch(hp["batch_size"], device)
        state, h, t = F.pad(x, (0, 3, 0, 0), value=0.0), 1.0 / nt, 0.0
        for _ in range(nt):  # RK4
            k = h * _otflow_rhs(state, t, phi)
            new = state + k / 6
            k = h * _otflow_rhs(state + 0.5 * k, t + h / 2, phi)
            new = new + k / 3
            k = h * _otflow_rhs(state + 0.5 * k, t + h / 2, phi)
            new = new + k / 3
            k = h * _otflow_rhs(state + k, t + h, phi)
            state, t = new + k / 6, t + h
        nll = -(torch.sum(-0.5 * math.log(2 * math.pi) - state[:, :2].pow(2) / 2, 1) + state[:, 2])
        loss = alpha[0] * state[:, 3].mean() + alpha[1] * nll.mean() + alpha[2] * state[:, 4].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    return step


# --- VAE and DCGAN on MNIST -------------------------------------------------------------------------------------
class _Generator(nn.Module):
    def __init__(self, w: int, q: int) -> None:
        super().__init__()
        self.w = w
        self.fc = nn.Linear(q, 2 * w * 7 * 7)
        self.conv2 = nn.ConvTranspose2d(2 * w, w, 4, 2, 1)
        self.conv1 = nn.ConvTranspose2d(w, 1, 4, 2, 1)
        self.bn2, self.bn1 = nn.BatchNorm2d(2 * w), nn.BatchNorm2d(w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        g = F.relu(self.bn2(self.fc(z).view(len(z), 2 * self.w, 7, 7)))
        return torch.sigmoid(self.conv1(F.relu(self.bn1(self.conv2(g)))))


class _Encoder(nn.Module):
    def __init__(self, w: int, q: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, w, 4, 2, 1), nn.Conv2d(w, 2 * w, 4, 2, 1)
        self.mu, self.logvar = nn.Linear(2 * w * 7 * 7, q), nn.Linear(2 * w * 7 * 7, q)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1)
        return self.mu(h), self.logvar(h)


class _Discriminator(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, w, 4, 2, 1), nn.Conv2d(w, 2 * w, 4, 2, 1)
        self.bn1, self.bn2 = nn.BatchNorm2d(w), nn.BatchNorm2d(2 * w)
        self.fc = nn.Linear(2 * w * 7 * 7, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.bn1(self.conv1((x - 0.5) / 0.5)), 0.2)
        h = F.leaky_relu(self.bn2(self.conv2(h)), 0.2)
        return torch.sigmoid(self.fc(h.flatten(1)))


def _mnist_batches(data_root: Path, batch_size: int, device: torch.device) -> Callable[[], torch.Tensor]:
    """Endless shuffled batches from torchvision's per-image MNIST pipeline, as the course scripts load them."""
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.datasets import MNIST

    loader = DataLoader(MNIST(str(data_root), train=True, download=False, transform=transforms.ToTensor()),
                        batch_size=batch_size, shuffle=True)

    def batches():
        while True:
            for images, _ in loader:
                yield images.to(device)

    it = batches()
    return lambda: next(it)


def vae_mnist(device: torch.device, hp: dict[str, Any], data_root: Path) -> Step:
    enc, dec = _Encoder(hp["width"], hp["latent_dim"]).to(device), _Generator(hp["width"], hp["latent_dim"]).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=hp["lr"], weight_decay=hp["weight_decay"])
    next_batch = _mnist_batches(data_root, hp["batch_size"], device)

    def step() -> None:
        x = next_batch()
        mu, logvar = enc(x)
        eps = torch.randn_like(mu)
        z = torch.exp(logvar) * eps + mu
        gz = dec(z)
        log_px = -F.binary_cross_entropy(gz.view(-1, 784), x.view(-1, 784), reduction="none").sum(1)
        log_pz = -0.5 * torch.norm(z, dim=1) ** 2  # additive constants left out
        log_q = -0.5 * torch.norm(eps) ** 2 - 0.5 * torch.sum(logvar)
        loss = (-(log_px + log_pz).sum() + log_q) / len(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()

    return step


def dcgan_mnist(device: torch.device, hp: dict[str, Any], data_root: Path) -> Step:
    g, d = _Generator(hp["width"], hp["latent_dim"]).to(device), _Discriminator(hp["width"]).to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]))
    opt_d = torch.optim.Adam(d.parameters(), lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]))
    next_batch = _mnist_batches(data_root, hp["batch_size"], device)

    def z() -> torch.Tensor:
        return torch.randn(hp["batch_size"], hp["latent_dim"], device=device)

    def step() -> None:
        x = next_batch()
        loss_d = -torch.log(d(x)).mean() - torch.log(1 - d(g(z()))).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        loss_g = torch.log(1 - d(g(z()))).mean()
        loss_g.backward()
        opt_g.step()
        loss_d.item(), loss_g.item()

    return step


# (method, dataset) -> builder(device, hp, data_root): hp are the suite's resolved hyper-parameters of the method.
REFERENCES: dict[tuple[str, str], Callable[..., Step]] = {
    ("realnvp", "moons"): realnvp_moons,
    ("otflow", "moons"): otflow_moons,
    ("vae", "mnist"): vae_mnist,
    ("dcgan", "mnist"): dcgan_mnist,
}
