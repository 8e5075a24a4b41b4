"""The shipped models load, sample the right shapes, and are good at what they were trained for."""

import pytest
import torch

from sdeflow import data, metrics, samplers
from sdeflow.generation import gather, generate
from sdeflow.registry import GRIDS
from sdeflow.pretrained import PRETRAINED, load_classifier, load_model, load_network


def _samples(model, n, nfe=10, labels=None):
    ts = GRIDS["auto"](nfe, model.denoiser.schedule)
    return gather(generate(model.denoiser, samplers.DPMSolverPP(order=2), ts, model.shape, n, labels=labels), 1)


def test_every_shipped_model_loads_and_is_listed():
    from sdeflow.cli.main import main

    for name in PRETRAINED:
        model = load_model(name, bridges=True, tokens=True)
        net = model.denoiser.net if model.kind == "tokens" else model.denoiser.model
        assert model.meta["step"] > 0 and net.training is False
        assert model.bridge == (name == "digits-bridge") and (model.kind == "tokens") == (name == "digits-tokens")
    assert main(["list"]) == 0
    with pytest.raises(ValueError, match="sdeflow restore --checkpoint digits-bridge"):
        load_model("digits-bridge")
    with pytest.raises(ValueError, match="sdeflow sample --checkpoint digits-tokens"):
        load_model("digits-tokens")


def test_the_shipped_classifier_recognises_held_out_real_digits():
    clf, meta, _ = load_network("digits-classifier")
    d = data.digits()
    with torch.no_grad():
        acc = float((clf(d.x).argmax(1) == d.labels).double().mean())
    assert meta["test_accuracy"] > 0.95 and acc > 0.97


def test_digits_samples_are_recognised_as_their_class():
    """Class-conditional samples at NFE 10 are classified as the requested class far above chance (0.1)."""
    model = load_model("digits")
    assert model.shape == (1, 8, 8) and model.num_classes == 10
    labels = torch.arange(200) % 10
    x = _samples(model, 200, labels=labels)
    assert torch.isfinite(x).all() and x.abs().max() < 3
    clf, _, _ = load_network("digits-classifier")
    with torch.no_grad():
        acc = float((clf(x).argmax(1) == labels).double().mean())
    assert acc > 0.85


@pytest.mark.parametrize("name", [n for n in PRETRAINED if not n.startswith("digits")])
def test_toy_models_reproduce_their_data(name):
    model = load_model(name)
    x = _samples(model, 2000, nfe=20)
    target = data.load(name, toy_size=2000, seed=11).x
    gauss = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0)) * target.std(0)
    floor = metrics.sliced_wasserstein(data.load(name, toy_size=2000, seed=12).x, target)
    assert metrics.sliced_wasserstein(x, target) < 0.25 * metrics.sliced_wasserstein(gauss, target) + floor


def test_the_weaker_digits_model_is_weaker_and_the_same_task():
    """digits-small (autoguidance's default guide) has the same conditioning and output shape, and its
    class-conditional samples are recognised less often than the full model's at the same budget."""
    good, small = load_model("digits"), load_model("digits-small")
    assert small.shape == good.shape and small.num_classes == good.num_classes
    assert sum(p.numel() for p in small.denoiser.model.parameters()) < 0.5 * sum(p.numel() for p in good.denoiser.model.parameters())
    labels = torch.arange(300) % 10
    clf, _, _ = load_network("digits-classifier")
    with torch.no_grad():
        acc = {name: float((clf(_samples(m, 300, labels=labels)).argmax(1) == labels).double().mean())
               for name, m in (("good", good), ("small", small))}
    assert acc["small"] < acc["good"]


def test_the_noise_aware_classifier_knows_clean_digits_and_forgets_them_in_noise():
    """Accurate on lightly noised digits, near chance (0.1) in pure noise, and monotone in between."""
    clf = load_classifier()
    d = data.digits()
    g = torch.Generator().manual_seed(0)
    accs = []
    for t in (0.1, 0.5, 1.0):
        a, s = clf.schedule.alpha(torch.tensor(t)), clf.schedule.sigma(torch.tensor(t))
        x = float(a) * d.x + float(s) * torch.randn(d.x.shape, generator=g)
        with torch.no_grad():
            accs.append(float((clf.logits(x, t).argmax(1) == d.labels).double().mean()))
    assert accs[0] > 0.95 and accs[0] > accs[1] > accs[2] and accs[2] < 0.2
    with pytest.raises(ValueError, match="not a noise-aware classifier"):
        load_classifier("digits")
    with pytest.raises(ValueError, match="load_classifier"):
        load_model("digits-noisy-classifier")


def test_the_shipped_few_step_digits_model_is_good_in_one_and_two_steps(capsys):
    """digits-reflow (reflow of the digits model) in one and two Euler steps: recognised as the
    requested class, and far closer to real digits in the classifier's features than the teacher's
    Euler steps at the same NFE (Frechet distance); sdeflow sample uses its own two Euler steps."""
    from sdeflow.cli.main import main
    from sdeflow.grids import uniform_grid

    clf, _, _ = load_network("digits-classifier")
    real = data.digits()
    with torch.no_grad():
        feats = clf.features(real.x).double()
    mean, cov = feats.mean(0), torch.cov(feats.T)
    labels = torch.arange(1000) % 10

    def score(name, nfe):
        model = load_model(name)
        x = gather(generate(model.denoiser, samplers.Euler(), uniform_grid(nfe), model.shape, 1000, labels=labels,
                            batch_size=500), 1)
        with torch.no_grad():
            return float((clf(x).argmax(1) == labels).double().mean()), metrics.frechet_distance(clf.features(x), mean, cov) ** 2

    for nfe in (1, 2):
        (acc, fd), (_, teacher) = score("digits-reflow", nfe), score("digits", nfe)
        assert acc > 0.95 and fd < 0.3 * teacher, (nfe, acc, fd, teacher)  # measured: 0.99, FD 1.1 against 10-25
    assert main(["sample", "--checkpoint", "digits-reflow", "-n", "20", "--out", ""]) == 0
    assert "with euler, 2 steps, NFE 2" in capsys.readouterr().out


def test_the_shipped_models_are_reached_from_the_package():
    import sdeflow

    assert sdeflow.pretrained.load_model("moons").shape == (2,)


def test_the_shipped_bridge_restores_real_digits():
    """digits-bridge at NFE 5 on 100 real digits, 2x downsampled with noise 0.05: the classifier recognises the
    restorations (measured 0.99; the back-projected sources alone: 0.55), they agree with their measurements
    (residual RMS measured 0.044, the noise is 0.05) and gain over 10 dB PSNR on their sources (measured 13.6)."""
    from sdeflow.bridges import restore
    from sdeflow.inverse.operator_names import make_operator
    from sdeflow.metrics import psnr

    model = load_model("digits-bridge", bridges=True)
    cfg = model.settings
    assert (cfg["process"], cfg["degrade"], cfg["degrade_noise"]) == ("ddbm-vp", "superres", 0.05)
    d = data.digits()
    idx = torch.arange(0, 1797, 18)[:100]
    x, labels = d.x[idx], d.labels[idx]
    op = make_operator("superres", model.shape)
    y = op.measure(x, 0.05, torch.Generator().manual_seed(0))
    source = op.back_project(y).float()
    out = restore(model.denoiser, source, 5, generator=torch.Generator().manual_seed(1))
    assert out.nfe == 5
    clf, _, _ = load_network("digits-classifier")
    with torch.no_grad():
        acc = float((clf(out.x).argmax(1) == labels).double().mean())
    assert acc > 0.9
    assert float((op(out.x.double()) - y).pow(2).mean().sqrt()) < 0.1
    gain = sum(psnr(a, b) - psnr(s, b) for a, s, b in zip(out.x, source, x)) / len(x)
    assert gain > 10
