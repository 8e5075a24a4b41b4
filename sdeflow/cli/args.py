"""Argument types the commands share."""

from __future__ import annotations

import argparse

import torch

#: At most this many images go into a PNG grid (the .npz holds them all).
PICTURE_LIMIT = 400


def positive_int(text: str) -> int:
    """An integer >= 1 from the command line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def model_or_problem_flags(p, checkpoint_help: str, problem_help: str) -> None:
    """``--checkpoint``, ``--problem`` and ``--schedule`` (a problem's) of the commands that take a model or an exact
    problem; the command checks that at most one of the two is given."""
    from ..registry import PROBLEMS, SCHEDULES

    p.add_argument("--checkpoint", default=None, metavar="NAME|PATH", help=checkpoint_help + " (default: shipped:digits)")
    p.add_argument("--problem", default=None, choices=list(PROBLEMS), metavar="NAME",
                   help=f"{problem_help}: one of {', '.join(PROBLEMS)}")
    p.add_argument("--schedule", default=None, choices=list(SCHEDULES), metavar="NAME",
                   help=f"schedule of a problem: one of {', '.join(SCHEDULES)} (default: vp-linear)")


def parse_labels(text: str | None, num: int, num_classes: int) -> torch.Tensor | None:
    """``--label``: ``all`` cycles through the classes (default), ``none`` samples unconditionally,
    ``K`` or ``K1,K2,...`` repeats the given classes."""
    if num_classes == 0:
        if text not in (None, "none"):
            raise ValueError("this model is unconditional: it takes no --label")
        return None
    if text is None or text == "all":
        return torch.arange(num) % num_classes
    if text == "none":
        return torch.full((num,), num_classes)
    try:
        chosen = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--label takes all, none, or class numbers such as 3 or 1,7; got {text!r}") from None
    bad = [k for k in chosen if not 0 <= k < num_classes]
    if bad:
        raise ValueError(f"--label {bad[0]} is not a class of this model (0..{num_classes - 1})")
    return torch.tensor(chosen)[torch.arange(num) % len(chosen)]
