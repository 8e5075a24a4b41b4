"""Argument types the commands share."""

from __future__ import annotations

import argparse


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
