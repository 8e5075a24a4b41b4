"""Safe files: atomic writes, output checks made before any work, and an exclusive lock on a run folder.

Every file sdeflow writes goes to a temporary file in the target folder, is flushed to disk and
renamed over the destination, so an interrupted run never leaves a half-written file; temporaries
a killed run left behind are removed by the next run that locks the folder.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import tempfile

import numpy as np

TEMP_PREFIX = ".tmp-"


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)``, flush the file to disk, then rename it to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_output(path: str, suffixes: tuple[str, ...] = (), what: str = "--out") -> str:
    """Refuse, before any work, an output path that cannot be written: a wrong suffix, a directory,
    or a folder that does not exist and cannot be made, or is not writable."""
    if suffixes and not path.lower().endswith(suffixes):
        raise ValueError(f"{what} {path!r}: write a {' or '.join(suffixes)} file")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a folder: give a file name inside it")
    folder = os.path.dirname(os.path.abspath(path))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{what} {path!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{what} {path!r}: no permission to write there; choose another place")
    return path


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


class FolderLock:
    """An exclusive lock on a run folder: the file ``.lock`` holding the owner's host and pid, made
    with ``O_EXCL``. A lock whose process no longer runs on this host is stale and taken over. The
    owner removes the temporaries an interrupted run left in the folder."""

    def __init__(self, folder: str):
        self.folder, self.path, self.held = folder, os.path.join(folder, ".lock"), False
        check_output(os.path.join(folder, "checkpoint"), what="--out")
        self.created = not os.path.exists(folder)  # then a run that fails before writing leaves nothing
        os.makedirs(folder, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None:
                    raise ValueError(f"run folder {folder!r} is in use by process {owner} (another sdeflow train "
                                     "writing there); wait for it to finish or choose another --out") from None
                try:  # stale: its process is gone
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self.held = True
            break
        else:
            raise ValueError(f"could not lock the run folder {folder!r}; try again")
        for tmp in glob.glob(os.path.join(folder, TEMP_PREFIX + "*")) + glob.glob(os.path.join(folder, "*", TEMP_PREFIX + "*")):
            os.unlink(tmp)

    def _owner(self) -> str | None:
        """The live owner ``host pid`` of an existing lock, or None when the lock is stale."""
        try:
            with open(self.path) as f:
                host, pid = f.read().split()
            pid = int(pid)
        except (OSError, ValueError):
            return None
        if host != socket.gethostname():
            return f"{pid} on {host}"  # cannot check another machine's processes: respect the lock
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return str(pid)

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.unlink(self.path)
                if self.created and not os.listdir(self.folder):
                    os.rmdir(self.folder)
            except FileNotFoundError:
                pass
