"""Writing files so that no run ever leaves a half-written, mixed or foreign file.

Every file the tool writes goes through `Commit` (or `write_atomic`, a
one-file commit):

1. each new file is written to a temp file in its target's folder, with a
   unique name ``.{target}.{pid}.{random}.tmp``, flushed and fsynced, and
   given the permissions the user's umask allows (0666 & ~umask);
2. a commit of several files first writes a *journal* (itself atomically):
   the list of temp -> target renames. Once the journal exists the commit is
   decided: `recover` rolls an interrupted commit forward, so a reader after
   a crash at any point sees all old files or all new ones, never a mix;
3. the temps are renamed over their targets, each folder is fsynced, and
   the journal is removed.

Temp files of dead processes (killed runs) are removed by the next commit in
the same folder (`remove_stale_temps`). A disk-full or read-only folder is a
`StorageError` naming the folder; the previous files are left as they were.

Also here, because every writer needs them: `file_lock` (an exclusive fcntl
lock beside a file, for read-merge-write), `safe_path` (keeps paths built
from data inside their base folder) and the cache fingerprint helpers
(`path_identity`, `dataset_identity`, `cache_fingerprint`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from sparse_coding.errors import StorageError

logger = logging.getLogger(__name__)

_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")
JOURNAL_SUFFIX = ".commit"
_UMASK_LOCK = threading.Lock()


# ---------------------------------------------------------------- permissions and folders


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


def file_mode() -> int:
    """Permissions of a new file: what ``open()`` would give (0666 minus the umask)."""
    return 0o666 & ~_umask()


def _fsync_folder(folder: Path) -> None:
    """Make renames in `folder` durable; file systems that cannot sync folders are skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _storage_error(target: Path, e: OSError) -> StorageError:
    reason = os.strerror(e.errno) if e.errno else str(e)
    hint = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space (disk quota)",
        errno.EROFS: "the folder is on a read-only file system; choose another DATA_DIR",
        errno.EACCES: "the folder is not writable by this user; fix its permissions or use another DATA_DIR",
    }.get(e.errno or 0, "check the folder")
    return StorageError(
        f"could not write {target.name} in the folder {target.parent}: {reason}; {hint}. "
        f"The previous files there were left as they were."
    )


# ---------------------------------------------------------------- temps and commits


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGTERM/SIGINT until the block ends, so a temp file is never created without being tracked."""
    held = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _new_temp(target: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temps(folder: Path) -> int:
    """Remove temp files left in `folder` by processes that no longer run.

    Temps named by a pending journal are kept: `recover` needs them.

    Returns:
        How many were removed.
    """
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    pending = {
        temp for journal in entries if journal.name.endswith(JOURNAL_SUFFIX) for temp, _ in _renames(journal)
    }
    removed = 0
    for path in entries:
        match = _TEMP_RE.match(path.name)
        if match and path not in pending and not _pid_alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    if removed:
        logger.info("removed %d temp files of interrupted runs from %s", removed, folder)
    return removed


def _renames(journal: Path) -> list[tuple[Path, Path]]:
    """The (temp, target) pairs a journal records; [] when it is unreadable."""
    try:
        data = json.loads(journal.read_text(encoding="utf-8"))
        return [(Path(temp), Path(target)) for temp, target in data["renames"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def recover(journal: Path) -> bool:
    """Finish a commit that a crash interrupted after its journal was written.

    Returns:
        True when a commit was rolled forward.
    """
    if not journal.exists():
        return False
    renames = _renames(journal)
    for temp, target in renames:
        if temp.exists():
            os.replace(temp, target)
    for folder in {target.parent for _, target in renames}:
        _fsync_folder(folder)
    journal.unlink(missing_ok=True)
    _fsync_folder(journal.parent)
    logger.warning("finished an interrupted write of %s", ", ".join(str(t) for _, t in renames))
    return True


class Commit:
    """Several files replaced together: all new or all old, even after a kill.

    Use as ``with Commit(journal) as commit: commit.write(path, data)``; the
    files are replaced when the block ends without an exception, and every
    temp file left is removed in any case. ``journal`` may be None for a
    single-file commit (one rename is atomic by itself).
    """

    def __init__(self, journal: Path | None = None) -> None:
        self.journal = journal
        self.temps: dict[Path, Path] = {}  # target -> temp
        self.decided = False  # the journal is written: the temps belong to `recover` now

    def temp(self, target: Path) -> Path:
        """The temp file that will replace `target` (created empty; fill it, e.g. by a subprocess)."""
        target = Path(target)
        if target not in self.temps:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                remove_stale_temps(target.parent)
                with _signals_held():
                    self.temps[target] = _new_temp(target)
            except OSError as e:
                raise _storage_error(target, e) from e
        return self.temps[target]

    def write(self, target: Path, data: bytes | str) -> None:
        """Write `data` (str as UTF-8) as the new content of `target`, fsynced."""
        temp = self.temp(target)
        payload = data.encode("utf-8") if isinstance(data, str) else data
        try:
            with open(temp, "wb") as file:
                file.write(payload)
                file.flush()
                os.fsync(file.fileno())
        except OSError as e:
            raise _storage_error(Path(target), e) from e

    def drop(self, target: Path) -> None:
        """Leave `target` as it is (its temp is removed)."""
        if (temp := self.temps.pop(Path(target), None)) is not None:
            temp.unlink(missing_ok=True)

    def apply(self) -> None:
        """Replace every target by its temp; with several files, through the journal."""
        mode = file_mode()
        try:
            for temp in self.temps.values():
                os.chmod(temp, mode)
            if self.journal is not None and len(self.temps) > 1:
                renames = [[str(temp), str(target)] for target, temp in self.temps.items()]
                self.decided = True  # from here on, the journal (once it exists) decides
                write_atomic(self.journal, json.dumps({"renames": renames}))
            for target, temp in self.temps.items():
                os.replace(temp, target)
            for folder in {target.parent for target in self.temps}:
                _fsync_folder(folder)
        except OSError as e:
            raise _storage_error(next(iter(self.temps), Path(".")), e) from e
        if self.decided:
            self.journal.unlink(missing_ok=True)
            self.decided = False
        self.temps.clear()

    def __enter__(self) -> Commit:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            if exc_type is None:
                self.apply()
        finally:
            if self.decided and self.journal is not None and self.journal.exists():
                with contextlib.suppress(
                    OSError
                ):  # interrupted after the journal: finish now, or the next reader will
                    recover(self.journal)
            else:
                for temp in self.temps.values():
                    temp.unlink(missing_ok=True)
            self.temps.clear()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace `path` by `data` atomically (unique temp, fsync, rename, folder fsync, umask mode).

    Raises:
        StorageError: the folder is full, read-only or not writable (named in the message).
    """
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
    """Hold an exclusive fcntl lock on `path` (created if needed), waiting (logged) while another has it.

    Args:
        path: the lock file (kept afterwards: removing it would let two runs lock different files).
        what: what is locked, for the log line ("the graph g.dot").
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
    except OSError as e:
        raise _storage_error(Path(path), e) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another run to finish writing %s (lock %s)", what, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- paths built from data


def safe_component(text: str) -> str:
    """One path component from arbitrary text: no separators, never ``.`` or ``..`` (they become ``%2E``)."""
    cleaned = re.sub(r"[^\w.-]", "_", text) or "_"
    return "%2E" * len(cleaned) if cleaned.strip(".") == "" else cleaned


def safe_path(base: Path, *parts: str) -> Path:
    """``base/part/...`` with every part sanitised; a result outside `base` (a symlink) is refused.

    Raises:
        StorageError: the path would leave `base`.
    """
    path = Path(base).joinpath(*(safe_component(p) for p in parts))
    if not path.resolve().is_relative_to(Path(base).resolve()):
        raise StorageError(f"{path} leads outside {base} (through a link); remove the link or move {base}")
    return path


# ---------------------------------------------------------------- cache fingerprints


def path_identity(path: Path) -> dict[str, Any]:
    """What tells a changed file from the same one: resolved path, size, mtime (of each file in a folder)."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        return {"path": str(path), "missing": True}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    entries = [
        [str(p.relative_to(path)) if p != path else "", p.stat().st_size, p.stat().st_mtime_ns] for p in files
    ]
    return {"path": str(path), "files": entries}


def dataset_identity(dataset: str | None, *, revision: str | None = None) -> dict[str, Any] | None:
    """A local dataset by its files' identity, a hub dataset by name and revision; None without a dataset."""
    if dataset is None:
        return None
    if Path(dataset).expanduser().exists():
        return {"local": path_identity(Path(dataset))}
    return {"hub": dataset, "revision": revision}


def model_identity(model: str) -> dict[str, Any]:
    """A hub model by name; a local model folder also by its files' identity."""
    if Path(model).expanduser().is_dir():
        return {"name": model, "local": path_identity(Path(model))}
    return {"name": model}


def sae_identity(source: str | None, weights: Path | None) -> dict[str, Any]:
    """One SAE: its configured source and its weights file identity (a hub file resolves to its blob)."""
    return {"source": source, "weights": None if weights is None else path_identity(weights)}


def cache_fingerprint(
    *,
    model: str,
    saes: Mapping[str, dict[str, Any]],
    dataset: str | None,
    revision: str | None = None,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything a cache depends on, JSON-ready: a cache serves a run whose fingerprint has no `differences`.

    Args:
        model: MODEL_DIR.
        saes: site key -> `sae_identity` of every SAE the cache holds values of.
        dataset, revision: DATASET (a local path or a hub name) and its revision; None for PROMPT.
        settings: named groups of every other value that shapes the cache
            (e.g. ``{"dataset": {...}, "cluster": {...}}``).
    """
    return {
        "model": model_identity(model),
        "saes": dict(sorted(saes.items())),
        "dataset_identity": dataset_identity(dataset, revision=revision),
        **settings,
    }


def fingerprint_differences(cached: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What keeps a cache from serving a run, in words ('dataset.MAX_SEQ_LEN was 64, now 32'); [] when none.

    SAEs are compared for the sites both hold: a cache may hold more sites,
    and the caller says which sites it lacks.
    """
    found: list[str] = []
    for name in sorted(current.keys() - {"saes"}):
        found += _changes(name, cached.get(name), current[name])
    cached_saes = cached.get("saes") or {}
    for key, sae in current["saes"].items():
        if key not in cached_saes:
            continue
        if cached_saes[key].get("source") != sae["source"]:
            found.append(f"{key} SAE was {cached_saes[key].get('source')!r}, now {sae['source']!r}")
        elif cached_saes[key].get("weights") != sae["weights"]:
            found.append(f"{key} SAE weights changed on disk ({(sae['weights'] or {}).get('path')})")
    return found


def _changes(name: str, old: Any, new: Any) -> list[str]:
    """'name.key was X, now Y' for each differing entry (dicts one level deep)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(old.keys() | new.keys())
        return [
            f"{name}.{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)
        ]
    return [] if old == new else [f"{name} was {old!r}, now {new!r}"]


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> str:
    """A short hash of a fingerprint, for file headers and logs."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
