"""Atomic file writes: every file sdeflow writes goes to a temporary file in the target folder and
is renamed over the destination, so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")

    atomic_write(path, write)


def save_npz(path: str, **arrays) -> None:
    """``np.savez`` to ``path``, atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
