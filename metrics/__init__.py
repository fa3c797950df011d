"""Pure metric functions (arrays/tensors in, numbers out) with documented formulas.

Submodules: ``likelihood`` (NLL, bits/dim, IWAE, ELBO gap), ``wasserstein`` (exact and sliced W_p via POT),
``fid`` (Fréchet distance, MNIST feature extractor, torch-fidelity wrapper), ``modes`` (mixture mode and class
coverage), ``precision_recall`` (k-NN precision/recall). Import the submodule you need; nothing heavy
(torch-fidelity, POT) is imported here.
"""
