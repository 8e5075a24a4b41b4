"""The shipped models load, sample the right shapes, and are good at what they were trained for."""

import pytest
import torch

from sdeflow import data, metrics, samplers
from sdeflow.generation import gather, generate
from sdeflow.registry import GRIDS
from sdeflow.pretrained import PRETRAINED, load_model, load_network


def _samples(model, n, nfe=10, labels=None):
    ts = GRIDS["auto"](nfe, model.denoiser.schedule)
    return gather(generate(model.denoiser, samplers.DPMSolverPP(order=2), ts, model.shape, n, labels=labels), 1)


def test_every_shipped_model_loads_and_is_listed():
    from sdeflow.cli.main import main

    for name in PRETRAINED:
        model = load_model(name)
        assert model.meta["step"] > 0 and model.denoiser.model.training is False
    assert main(["list"]) == 0


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


@pytest.mark.parametrize("name", [n for n in PRETRAINED if n != "digits"])
def test_toy_models_reproduce_their_data(name):
    model = load_model(name)
    x = _samples(model, 2000, nfe=20)
    target = data.load(name, toy_size=2000, seed=11).x
    gauss = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0)) * target.std(0)
    floor = metrics.sliced_wasserstein(data.load(name, toy_size=2000, seed=12).x, target)
    assert metrics.sliced_wasserstein(x, target) < 0.25 * metrics.sliced_wasserstein(gauss, target) + floor
