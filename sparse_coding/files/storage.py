"""Files under DATA_DIR: whole-file writes, locks, and paths that stay inside.

Every file is written to a temp beside its target (``.{target}.{pid}.{random}.tmp``, created
exclusively, so never through a link), fsynced, given the permissions the umask allows and renamed
over the target (`write_atomic`; `Commit` for several files renamed in a chosen order): a rename
replaces a link at the target, it never writes through it. Temps of a failed or interrupted write
(exceptions, Ctrl-C, SIGTERM) are removed on the way out, a SIGKILL's by the next write in that
folder (`remove_stale_temps`). A full disk, read-only or unwritable folder is a `StorageError`
naming the folder (`storage_error`), and the previous files are left as they were. Paths built
from data (`safe_path`) and paths a run writes (`check_inside`) must resolve inside their base
folder, so no link leads a write out of DATA_DIR. Nothing here imports a POSIX-only module:
`import sparse_coding` works on Windows.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import filelock

from sparse_coding.errors import StorageError

logger = logging.getLogger(__name__)

# A write failed for lack of space (disk or quota), or for lack of permission.
FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE_ERRNOS = frozenset({errno.EACCES, errno.EPERM})

_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
_UMASK_LOCK = threading.Lock()


# ---------------------------------------------------------------- permissions, folders, errors


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (threads write too)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make renames in `folder` durable; systems that cannot sync folders (Windows) are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def size_text(n_bytes: float) -> str:
    """'3.4 MB', or '120 kB' below a tenth of a megabyte."""
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.0f} kB"


def free_space(folder: Path) -> int | None:
    """Bytes free in `folder` (or its nearest existing parent); None when unknown."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def full_disk_text(folder: Path, needed: int | None) -> str:
    """'this write needs about N MB there and M MB are free' (the parts that are known)."""
    free = free_space(folder)
    need = f"this run's files need about {size_text(needed)} there" if needed else ""
    have = f"{size_text(free)} are free" if free is not None else ""
    return " and ".join(part for part in (need, have) if part)


def storage_error(target: Path, e: OSError, needed: int | None = None) -> StorageError:
    """A `StorageError` for a failed write of `target`: the folder, the reason and the fix."""
    target = Path(target)
    reason = os.strerror(e.errno) if e.errno else str(e)
    if e.errno in FULL_DISK_ERRNOS:
        hint = f"{full_disk_text(target.parent, needed)}; free some space or set DATA_DIR to another disk"
    elif e.errno == errno.EROFS:
        hint = "the folder is on a read-only file system; choose another DATA_DIR"
    elif e.errno in NOT_WRITABLE_ERRNOS:
        hint = "the folder is not writable by this user; fix its permissions or use another DATA_DIR"
    else:
        hint = "check the folder"
    return StorageError(
        f"could not write {target.name} in the folder {target.parent}: {reason}; {hint}. "
        f"The previous files there were left as they were."
    )


# ---------------------------------------------------------------- paths


def check_inside(base: Path, path: Path) -> Path:
    """`path` when it resolves inside `base` (links followed), else a StorageError naming both."""
    base, path = Path(base), Path(path)
    if not path.resolve().is_relative_to(base.resolve()):
        raise StorageError(
            f"{path} leads outside {base} (through a symbolic link); sparse_coding writes only inside "
            f"DATA_DIR. Remove the link, or set DATA_DIR to the folder you want written"
        )
    return path


def safe_path(base: Path, *parts: str) -> Path:
    """``base/part/...``, each part made one path component from arbitrary text (no separators; ``.``
    and ``..`` become ``%2E``), checked inside `base`.

    Raises:
        StorageError: the path would leave `base` through a link.
    """
    names = [re.sub(r"[^\w.-]", "_", part) or "_" for part in parts]
    names = ["%2E" * len(name) if name.strip(".") == "" else name for name in names]
    return check_inside(base, Path(base).joinpath(*names))


# ---------------------------------------------------------------- temps and commits


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM/SIGINT (where the platform can) while a temp is created and recorded."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = mask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, previous)


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs; on systems without POSIX signals, always True (nothing is removed)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would end the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temps(folder: Path) -> int:
    """Remove temp files and folders left in `folder` by processes that no longer run (a SIGKILL).

    Returns:
        How many were removed.
    """
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    removed = 0
    for path in entries:
        match = _TEMP_RE.match(path.name)
        if not match or _pid_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
    if removed:
        logger.info("removed %d temp files of interrupted runs from %s", removed, folder)
    return removed


class Commit:
    """New files written to temps beside their targets (``with Commit() as commit: commit.write(path,
    data)``), renamed over them when the block ends without an exception, in the order written or the
    order given to `apply`; every temp left is removed in any case. A crash during the renames leaves
    some targets new and some old, so `graph_writer` says which is renamed first (the .json)."""

    def __init__(self) -> None:
        self.temps: dict[Path, Path] = {}  # target -> temp file
        self.scratches: list[Path] = []  # temp folders, never renamed
        self.written = 0  # bytes, for the full-disk message
        self.cleaned: set[Path] = set()  # folders whose stale temps were removed

    def _new(self, name: Path, folder: bool) -> Path:
        name = Path(name)
        try:
            name.parent.mkdir(parents=True, exist_ok=True)
            if name.parent not in self.cleaned:
                remove_stale_temps(name.parent)
                self.cleaned.add(name.parent)
            prefix, where = f".{name.name}.{os.getpid()}.", name.parent
            with _signals_held():
                if folder:
                    temp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=where))
                    self.scratches.append(temp)
                else:
                    fd, temp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=where)
                    os.close(fd)
                    temp = self.temps[name] = Path(temp_name)
        except OSError as e:
            raise storage_error(name, e, self.written) from e
        return temp

    def temp(self, target: Path) -> Path:
        """The (empty) temp file that will replace `target`: fill it, e.g. by a subprocess."""
        return self.temps.get(Path(target)) or self._new(target, folder=False)

    def scratch(self, name: Path) -> Path:
        """A temp folder beside `name` for work files; removed with the temps, never renamed."""
        return self._new(name, folder=True)

    def write(self, target: Path, data: bytes | str) -> None:
        """Write `data` (str as UTF-8) as the new content of `target`, fsynced."""
        temp = self.temp(target)
        payload = data.encode("utf-8") if isinstance(data, str) else data
        try:
            fill(temp, payload)
        except OSError as e:
            raise storage_error(Path(target), e, self.written + len(payload)) from e
        self.written += len(payload)

    def apply(self, order: Sequence[Path] = ()) -> None:
        """Rename every temp over its target (those in `order` first, in that order) and sync the folders."""
        mode = 0o666 & ~_umask()  # what open() would give a new file
        targets = [Path(t) for t in order if Path(t) in self.temps]
        targets += [t for t in self.temps if t not in targets]
        try:
            for target in targets:
                os.chmod(self.temps[target], mode)
                os.replace(self.temps[target], target)
                del self.temps[target]
            for folder in {target.parent for target in targets}:
                _fsync_folder(folder)
        except OSError as e:
            raise storage_error(targets[0] if targets else Path("."), e) from e

    def __enter__(self) -> Commit:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                self.apply()
        finally:
            for temp in self.temps.values():
                with contextlib.suppress(OSError):
                    temp.unlink()
            for folder in self.scratches:
                shutil.rmtree(folder, ignore_errors=True)
            self.temps.clear()
            self.scratches.clear()


def fill(temp: Path, data: bytes, *, sync: bool = True, append: bool = False) -> None:
    """Write (or append) `data` to a temp file of a `Commit`, fsynced unless `sync` is False.

    The temp must exist: one removed meanwhile (the commit was given up) is not created again.
    """
    with open(temp, "ab" if append else "r+b") as file:
        if not append:
            file.truncate()
        file.write(data)
        if sync:
            file.flush()
            os.fsync(file.fileno())


def write_atomic(path: Path, data: bytes | str, *, inside: Path | None = None) -> None:
    """Replace `path` by `data` atomically (unique temp, fsync, rename, folder fsync, umask mode);
    StorageError when the folder is full, read-only, not writable, or leads outside `inside`."""
    if inside is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        check_inside(inside, Path(path).parent)
    with Commit() as commit:
        commit.write(Path(path), data)


# ---------------------------------------------------------------- signals and locks


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def exit_cleanly_on_sigterm() -> None:
    """Treat SIGTERM (``docker stop``, ``kill``) like Ctrl-C, so temp files are removed on the way out."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


@contextlib.contextmanager
def file_lock(path: Path, *, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a `filelock` lock file, created if needed and kept), logging a
    wait for `what` ("the graph g.json"); StorageError when `path` is a link (never followed) or its
    folder cannot be written."""
    path = Path(path)
    if path.is_symlink():
        raise StorageError(
            f"the lock file {path} is a symbolic link (to {os.readlink(path)}); sparse_coding never "
            f"writes through links. Remove the link and run again"
        )
    lock = filelock.FileLock(str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            logger.info("waiting for another run to finish writing %s (lock %s)", what, path)
            lock.acquire()
    except OSError as e:
        raise storage_error(path, e) from e
    try:
        yield
    finally:
        lock.release()
