"""Safe files: atomic writes, output checks made before any work, and an exclusive lock on a run folder.

Every file sdeflow writes goes to a temporary file in the target folder, is flushed to disk and
renamed over the destination, so an interrupted run never leaves a half-written file. A temporary's
name carries its writer's host and process id (``.tmp-<host>-<pid>-...``); one whose process no
longer runs on this host was left by a killed run, and the next write into that folder removes it.
A write that fails (a full disk, a read-only folder) raises an ``OSError`` that names the file and
leaves the previous file, if any, as it was.

Nothing sdeflow writes goes into the installed package: its files (the shipped models and their
tuned grids) are read-only to sdeflow (:func:`check_output` refuses them, and the tuned grids of a
shipped model go to :func:`user_folder`).
"""

from __future__ import annotations

import glob
import json
import os
import socket
import tempfile

import numpy as np

TEMP_PREFIX = ".tmp-"

#: The installed package's folder: read-only to sdeflow.
PACKAGE = os.path.dirname(os.path.abspath(__file__))


def user_folder() -> str:
    """Where sdeflow keeps what a user makes for shipped models (their tuned grids):
    ``$SDEFLOW_HOME``, else ``$XDG_DATA_HOME/sdeflow``, else ``~/.local/share/sdeflow``."""
    home = os.environ.get("SDEFLOW_HOME")
    if home:
        return os.path.abspath(os.path.expanduser(home))
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(os.path.abspath(data), "sdeflow")


def in_package(path: str) -> bool:
    """Whether ``path`` lies inside the installed sdeflow package."""
    package = os.path.realpath(PACKAGE)
    try:
        return os.path.commonpath([os.path.realpath(path), package]) == package
    except ValueError:  # another drive
        return False


def _temp_prefix() -> str:
    return f"{TEMP_PREFIX}{socket.gethostname().replace('-', '_')}-{os.getpid()}-"


def remove_stale_temporaries(folder: str) -> None:
    """Remove the temporaries that writers on this host left in ``folder`` when they were killed
    (their process no longer runs); a live writer's temporaries are left alone."""
    host = socket.gethostname().replace("-", "_")
    for tmp in glob.glob(os.path.join(glob.escape(folder), TEMP_PREFIX + "*")):
        parts = os.path.basename(tmp)[len(TEMP_PREFIX):].split("-", 2)
        if len(parts) < 3 or parts[0] != host or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)``, flush the file to disk, then rename it to ``path``. A failure of any
    kind (a full disk reported by the writer's own library included) raises an ``OSError`` naming
    ``path``; the previous ``path``, if any, is unchanged and the temporary is removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(), suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except Exception as err:
        _remove(tmp)
        kept = "the previous file is unchanged" if os.path.exists(path) else "nothing was written"
        reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
        failure = OSError(getattr(err, "errno", None) if isinstance(err, OSError) else None,
                          f"could not write it ({reason or type(err).__name__}); {kept}", path)
        raise failure from err
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def check_output(path: str, suffixes: tuple[str, ...] = (), what: str = "--out", inputs=()) -> str:
    """Refuse, before any work, an output path that cannot or must not be written: a wrong suffix, a
    directory, a folder that does not exist and cannot be made or is not writable, a file inside the
    installed package, or one of the command's ``inputs`` (files it reads)."""
    if suffixes and not path.lower().endswith(suffixes):
        raise ValueError(f"{what} {path!r}: write a {' or '.join(suffixes)} file")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a folder: give a file name inside it")
    for source in inputs:
        if source and os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise ValueError(f"{what} {path!r} is a file this command reads: writing it would replace its own input; "
                             "give another file name")
    if in_package(path):
        raise ValueError(f"{what} {path!r} lies inside the installed sdeflow package, whose files are read-only to "
                         "sdeflow; write it somewhere else")
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
        for tmp in glob.glob(os.path.join(glob.escape(folder), TEMP_PREFIX + "*")) + \
                glob.glob(os.path.join(glob.escape(folder), "*", TEMP_PREFIX + "*")):
            _remove(tmp)

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
        return str(pid) if _alive(pid) else None

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.unlink(self.path)
                if self.created and not os.listdir(self.folder):
                    os.rmdir(self.folder)
            except FileNotFoundError:
                pass
