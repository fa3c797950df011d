"""Per-run figures, drawn from saved checkpoints and samples (plotting never retrains or resamples).

2-D: samples over the test data, the model's log-density heat map (likelihood models), and for flows the
course's panel of g⁻¹(x) in latent space. Images: an 8×8 grid of samples.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bench import datasets  # noqa: E402
from bench.sampling import load_samples  # noqa: E402
from bench.train import load_model  # noqa: E402

GRID = 200  # heat-map resolution per axis


def _limits(x: torch.Tensor) -> tuple[tuple[float, float], tuple[float, float]]:
    lo, hi = x.min(0).values, x.max(0).values
    pad = 0.15 * (hi - lo)
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0])), (float(lo[1] - pad[1]), float(hi[1] + pad[1]))


@torch.no_grad()
def run_figure(run_dir: Path, out: Path) -> None:
    run_dir, out = Path(run_dir), Path(out)
    model, ckpt = load_model(run_dir)
    spec = ckpt["spec"]
    ds = datasets.load(spec["dataset"], spec["data_root"])
    saved = load_samples(run_dir)
    title = f"{spec['method']} on {spec['dataset']}, seed {spec['seed']}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if saved["status"] != "ok":
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.text(0.5, 0.5, f"run {saved['status']}:\n{ckpt['status'].get('reason', '')}", ha="center", va="center",
                wrap=True, fontsize=8)
        ax.set_axis_off()
    elif ds.kind == "image":
        imgs = saved["samples"][:64, 0]  # 64 × H × W, tiled 8 × 8
        h, w = imgs.shape[-2:]
        grid = imgs.reshape(8, 8, h, w).permute(0, 2, 1, 3).reshape(8 * h, 8 * w)
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
    else:
        test, samples = ds.test[:5000], saved["samples"][:5000]
        (x0, x1), (y0, y1) = _limits(test)
        panels = ["samples"] + (["density"] if "log_prob" in model.capabilities else []) \
            + (["latent"] if "inverse" in model.capabilities else [])
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
        for ax, panel in zip(axes[0], panels, strict=True):
            if panel == "samples":
                ax.scatter(test[:, 0], test[:, 1], s=1, c="0.7", label="test data")
                ax.scatter(samples[:, 0], samples[:, 1], s=1, c="C3", label="samples")
                ax.set_xlim(x0, x1), ax.set_ylim(y0, y1)
                ax.legend(loc="upper right", markerscale=6, fontsize=7)
            elif panel == "density":
                gx, gy = torch.linspace(x0, x1, GRID), torch.linspace(y0, y1, GRID)
                pts = torch.cartesian_prod(gx, gy)
                lp = torch.cat([model.log_prob(p) for p in pts.split(10_000)]).view(GRID, GRID)
                im = ax.imshow(lp.T.clamp(min=lp.max() - 15).numpy(), origin="lower", extent=(x0, x1, y0, y1),
                               aspect="auto", cmap="viridis")
                fig.colorbar(im, ax=ax, label="log p(x)")
            else:
                z = model.inverse(test)[0]
                ax.scatter(z[:, 0], z[:, 1], s=1, c="C0")
                ax.set_xlim(-4, 4), ax.set_ylim(-4, 4)
            ax.set_title({"samples": "samples vs test data", "density": "model log-density",
                          "latent": "g⁻¹(x): test data in latent space"}[panel], fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
