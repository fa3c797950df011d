"""Names both sides use: a method declares its family, a method's defaults and `unsupported` key on dataset names,
and `bench.datasets` maps each dataset name to its builder."""
from __future__ import annotations

FAMILIES = ("flow", "cnf", "vae", "gan")  # normalizing flows, continuous flows (CNFs), VAEs, GANs
TOY_DATASETS = ("moons", "ring8", "grid25")  # 2-D points
IMAGE_DATASETS = ("mnist", "binarized_mnist")  # 1×28×28 images
DATASETS = (*TOY_DATASETS, *IMAGE_DATASETS)
