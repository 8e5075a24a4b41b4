"""Digits scored by the shipped digits classifier (``sdeflow sample`` of digits models and the benchmarks)."""

from __future__ import annotations

import torch

from ..metrics import real_split, squared_frechet


class DigitsScorer:
    """Digits (``(N, 1, 8, 8)`` in ``[-1, 1]``) scored by the shipped digits classifier: ``score(x, labels) ->
    (accuracy, FD)``, the fraction classified as the class they were generated for (NaN without labels) and the
    squared Frechet distance between the classifier's 64 penultimate features of ``x`` and of the half "B" of a
    seeded class-balanced split of the 1797 real digits. ``floor``: the FD between the two real halves (how far
    two real sets of about 900 are apart); ``test_accuracy``: the classifier's on its held-out real digits."""

    def __init__(self):
        from ..data import digits
        from . import load_network

        self.clf, meta, _ = load_network("digits-classifier")
        data = digits()
        half_a, half_b = real_split(data.labels)
        with torch.no_grad():
            feats = self.clf.features(data.x)
        self.real, self.floor = feats[half_b], squared_frechet(feats[half_a], feats[half_b])
        self.test_accuracy, self.n_real = meta["test_accuracy"], len(half_b)

    def score(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[float, float]:
        x = x.float().cpu()
        with torch.no_grad():
            acc = float("nan") if labels is None else float((self.clf(x).argmax(1) == labels.cpu()).double().mean())
            return acc, squared_frechet(self.clf.features(x), self.real)
