"""Tests for metrics.fid: Bures–Wasserstein closed form, torch-fidelity agreement, MNIST extractor integration."""

import hashlib

import numpy as np
import ot
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_fid import fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from metrics.fid import (
    MnistClassifier,
    MnistClassifierExtractor,
    fid,
    frechet_distance,
    register_mnist_extractor,
    torch_fidelity_metrics,
)
from metrics.precision_recall import knn_precision_recall


def _spd(d, rng):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def _torch_fidelity_fid(mu1, s1, mu2, s2):
    out = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)
    return out["frechet_inception_distance"]


def test_frechet_distance_equals_bures_closed_form_and_torch_fidelity():
    rng = np.random.default_rng(0)
    for d in (1, 5, 40):
        mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _spd(d, rng), _spd(d, rng)
        root2 = scipy.linalg.sqrtm(s2).real  # independent formula: S2^1/2 S1 S2^1/2, scipy's sqrtm
        bures = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(root2 @ s1 @ root2).real)
        value = frechet_distance(mu1, s1, mu2, s2)
        assert value == pytest.approx(bures, rel=1e-8)
        assert value == pytest.approx(_torch_fidelity_fid(mu1, s1, mu2, s2), rel=1e-8)
        assert value == pytest.approx(ot.gaussian.bures_wasserstein_distance(mu1, mu2, s1, s2) ** 2, rel=1e-8)


def test_frechet_distance_one_dimensional_and_torch_inputs():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0, rel=1e-12)
    args = (torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[9.0]]))
    assert frechet_distance(*args) == pytest.approx(10.0, rel=1e-6)


def test_frechet_distance_singular_covariances_stay_finite():
    # 20 samples in 50-D: rank-19 covariances, exactly the case where sqrtm-based code returns complex/NaN.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 50)), rng.normal(size=(20, 50)) + 0.5
    value = fid(a, b)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert np.isfinite(value)
    assert value == pytest.approx(_torch_fidelity_fid(a.mean(0), s1, b.mean(0), s2), rel=1e-6)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_refuses_bad_input():
    eye = np.eye(3)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.zeros(3), eye * np.nan, np.zeros(3), eye)
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(np.zeros(3), -eye, np.zeros(3), eye)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), eye, np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        fid(np.zeros((1, 3)), np.zeros((5, 3)))


def test_fid_scales_with_the_square_of_the_features():
    # FID(c·a, c·b) = c²·FID(a, b): means scale by c, covariances by c². The PSD check's tolerance is relative to
    # the matrices' scale, so rounding noise is accepted at any scale and a clearly negative eigenvalue at none.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 50)), rng.normal(size=(20, 50)) + 0.5  # singular covariances, as above
    assert fid(1e4 * a, 1e4 * b) == pytest.approx(1e8 * fid(a, b), rel=1e-9)
    zero, eye = np.zeros(2), np.eye(2)
    assert frechet_distance(zero, 1e6 * np.diag([1, -1e-9]), zero, 1e6 * eye) == pytest.approx(1e6, rel=1e-6)
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(zero, 1e-6 * np.diag([1, -1e-3]), zero, 1e-6 * eye)


def test_fid_of_gaussian_samples():
    # Same Gaussian: FID_N is pure finite-sample bias, about (d + d(d+1)/2 ...)/N -> ~0.01 here.
    # N(0, I) vs N(m, I): ||m||^2 = 5, with sampling sd 2||m|| sqrt(2/N) = 0.045.
    rng = np.random.default_rng(2)
    n, d = 20_000, 8
    m = np.zeros(d)
    m[:2] = [1.0, 2.0]
    a, b, c = rng.normal(size=(n, d)), rng.normal(size=(n, d)), rng.normal(size=(n, d)) + m
    assert 0 <= fid(a, b) < 0.02
    assert fid(a, c) == pytest.approx(5.0, abs=0.2)
    assert fid(torch.tensor(a), torch.tensor(c)) == pytest.approx(fid(a, c), rel=1e-12)


# ---- torch-fidelity integration with the MNIST classifier extractor ----


def _save_weights(path, seed):
    torch.manual_seed(seed)
    torch.save(MnistClassifier().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images():
    """Two overlapping but distinguishable sets: smooth blobs (uint8 'real') and noisier, darker floats
    ('generated')."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centres = 8 + 12 * torch.rand(500, 2, generator=g)
    blobs = torch.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 20).unsqueeze(1)
    real = (blobs[:300] * 255).round().to(torch.uint8)
    generated = (0.9 * blobs[300:] + 0.05 * torch.rand(200, 1, 28, 28, generator=g)).clamp(0, 1)
    return generated, real


def test_mnist_classifier_accepts_uint8_and_float_layouts():
    net = MnistClassifier().eval()
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        ref = net(x.float() / 255)
        assert ref.shape == (4, 10)
        torch.testing.assert_close(net(x), ref)
        torch.testing.assert_close(net(x.reshape(4, 784).float() / 255), ref)
        assert net.features(x)[0].shape == (4, 128)


def test_register_mnist_extractor_name_tracks_weights_hash(tmp_path):
    w1 = _save_weights(tmp_path / "a.pt", seed=1)
    w2 = _save_weights(tmp_path / "b.pt", seed=2)
    name1 = register_mnist_extractor(w1)
    assert hashlib.sha256(w1.read_bytes()).hexdigest()[:12] in name1
    assert register_mnist_extractor(w1) == name1  # idempotent
    assert FEATURE_EXTRACTORS_REGISTRY[name1] is MnistClassifierExtractor
    assert register_mnist_extractor(w2) != name1
    with pytest.raises(ValueError, match="do not match"):
        MnistClassifierExtractor(name1, ["penultimate"], feature_extractor_weights_path=str(w2))


def test_torch_fidelity_metrics_match_direct_computation(tmp_path, images):
    generated, real = images
    weights = _save_weights(tmp_path / "clf.pt", seed=3)
    name = register_mnist_extractor(weights)
    out = torch_fidelity_metrics(generated, real, extractor_name=name, weights_path=weights)
    assert out["extractor"] == name
    assert all(np.isfinite(out[k]) for k in ("fid", "precision", "recall", "f_score"))

    # Independent computation: our classifier's penultimate features, our fid and knn_precision_recall.
    net = MnistClassifier()
    net.load_state_dict(torch.load(weights, weights_only=True))
    with torch.no_grad():
        feat_gen, feat_real = net.features(generated)[0], net.features(real)[0]
    expected = fid(feat_gen, feat_real)
    assert expected > 1e-3 * np.trace(np.cov(feat_real.numpy(), rowvar=False))  # the two sets really differ
    assert out["fid"] == pytest.approx(expected, rel=1e-5)
    pr = knn_precision_recall(feat_real, feat_gen, k=3)
    assert out["precision"] == pytest.approx(pr.precision, abs=1.5 / len(generated))
    assert out["recall"] == pytest.approx(pr.recall, abs=1.5 / len(real))
    assert out["f_score"] == pytest.approx(2 * pr.precision * pr.recall / (pr.precision + pr.recall), abs=0.01)

    no_prc = torch_fidelity_metrics(generated, real, extractor_name=name, weights_path=weights, prc=False)
    assert no_prc == {"fid": out["fid"], "extractor": name}


def test_inception_fid_reads_the_given_weights_file(tmp_path, images, monkeypatch):
    """The standard Inception path (`evaluation.inception_weights`): torch-fidelity loads the named weights file
    (no download) and reports the FID of the 2048-d pool features of the images as uint8 RGB, computed here
    directly with the same network. The published weights cannot be downloaded here, so the file holds a seeded
    random initialization of the same architecture: this checks the plumbing (gray → RGB uint8, the weights path,
    the feature layer), not the published numbers."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    with monkeypatch.context() as m:  # the architecture without its weights download
        m.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: None)
        m.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        weights = tmp_path / "inception.pth"
        random_net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for layer in random_net.modules():  # He init: the default one shrinks the features to ~1e-8 (a FID of ~1e-14)
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    torch.save(random_net.state_dict(), weights)
    generated, real = images[0][:12], images[1][:12]
    out = torch_fidelity_metrics(generated, real, weights_path=weights, prc=False)

    net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                feature_extractor_weights_path=str(weights)).eval()
    rgb = [(x if x.dtype == torch.uint8 else (x * 255).round().to(torch.uint8)).expand(-1, 3, -1, -1)
           for x in (generated, real)]
    with torch.no_grad():
        feats = [net(x)[0].double().numpy() for x in rgb]
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in feats]
    assert out["extractor"] == "inception-v3-compat"
    assert out["fid"] > 0.05 * np.trace(stats[1][1])  # the two sets really differ under these features
    assert out["fid"] == pytest.approx(_torch_fidelity_fid(*stats[0], *stats[1]), rel=1e-4, abs=0)
    assert out["fid"] == pytest.approx(fid(*feats), rel=1e-3, abs=0)  # our eigh-based distance, singular covariances


def test_only_clearly_negative_eigenvalues_are_rejected():
    """The PSD check is relative (1e-6 of the largest eigenvalue): a covariance with eigenvalue −1e-3 against 1 is
    not one, −1e-9 is rounding."""
    mu, eye = np.zeros(2), np.eye(2)
    with pytest.raises(ValueError, match="sigma1 is not positive semi-definite"):
        frechet_distance(mu, np.diag([1.0, -1e-3]), mu, eye)
    assert np.isfinite(frechet_distance(mu, np.diag([1.0, -1e-9]), mu, eye))


def test_torch_fidelity_precision_recall_use_the_given_neighbourhood(tmp_path, images):
    generated, real = images
    weights = _save_weights(tmp_path / "clf.pt", seed=3)
    name = register_mnist_extractor(weights)
    net = MnistClassifier()
    net.load_state_dict(torch.load(weights, weights_only=True))
    with torch.no_grad():
        feat_gen, feat_real = net.features(generated)[0], net.features(real)[0]
    k3, k5 = (knn_precision_recall(feat_real, feat_gen, k=k) for k in (3, 5))
    assert (k3.precision, k3.recall) != (k5.precision, k5.recall)  # the neighbourhood matters for these sets
    out = torch_fidelity_metrics(generated, real, extractor_name=name, weights_path=weights, prc_neighborhood=5)
    assert out["precision"] == pytest.approx(k5.precision, abs=1.5 / len(generated))
    assert out["recall"] == pytest.approx(k5.recall, abs=1.5 / len(real))
