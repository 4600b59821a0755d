"""storage: whole-file writes with umask permissions, commits, stale temps, locks, paths that stay inside."""

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sparse_coding.errors import StorageError
from sparse_coding.files import storage

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_get_the_permissions_the_umask_allows(tmp_path, umask):
    old = os.umask(umask)
    try:
        storage.write_atomic(tmp_path / "a.json", "{}")
        with open(tmp_path / "plain.txt", "w") as f:  # what an ordinary open() gives
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777


def test_a_commit_renames_in_the_order_asked_and_a_failure_before_it_changes_nothing(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")
    renamed = []
    real = os.replace
    monkeypatch.setattr(storage.os, "replace", lambda src, dst: (renamed.append(Path(dst)), real(src, dst)))
    with storage.Commit() as commit:
        commit.write(a, "new a")
        commit.write(b, "new b")
        commit.apply(order=[b, a])
    assert renamed == [b, a] and (a.read_text(), b.read_text()) == ("new a", "new b")
    with pytest.raises(KeyboardInterrupt), storage.Commit() as commit:
        commit.write(a, "newer a")
        commit.scratch(a)
        raise KeyboardInterrupt
    assert a.read_text() == "new a" and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_temps_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".g.dot.{dead_pid}.abc123.tmp"
    live = tmp_path / f".g.dot.{os.getpid()}.def456.tmp"
    folder = tmp_path / f".g.svg.drawing.{dead_pid}.ghi789.tmp"  # a killed drawing's scratch folder
    for path in (stale, live):
        path.write_text("x")
    (folder / "sc_draw_x").mkdir(parents=True)
    (folder / "sc_draw_x" / "drawing.dot").write_text("digraph { prompt }")
    (tmp_path / "user.tmp").write_text("not ours")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    (tmp_path / f".link.{dead_pid}.jkl012.tmp").symlink_to(outside)  # a link named like a temp
    assert storage.remove_stale_temps(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "user.tmp"]
    assert (outside / "keep").exists()  # the link was removed, not what it points to


@pytest.mark.parametrize("hostile", ["../../x", "..", ".", "/etc/passwd", "a/../../b", "", "ok/name"])
def test_paths_built_from_data_stay_inside_their_base(tmp_path, hostile):
    base = tmp_path / "cache"
    path = storage.safe_path(base, *hostile.split("/"), "1.json")
    assert path.resolve().is_relative_to(base.resolve())
    assert path.name == "1.json"


def test_a_link_out_of_the_base_is_refused(tmp_path):
    base = tmp_path / "cache"
    base.mkdir()
    (base / "escape").symlink_to(tmp_path)
    with pytest.raises(StorageError, match="outside"):
        storage.safe_path(base, "escape", "1.json")
    with pytest.raises(StorageError, match="outside"):
        storage.write_atomic(base / "escape" / "x.npz", b"data", inside=base)
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize(
    ("code", "hint"), [(errno.EROFS, "read-only file system"), (errno.EACCES, "not writable by this user")]
)
def test_a_read_only_or_unwritable_folder_is_an_error_naming_it(tmp_path, monkeypatch, code, hint):
    (tmp_path / "a").write_text("old")

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(storage.tempfile, "mkstemp", refuse)
    with pytest.raises(StorageError, match=f"folder {tmp_path}") as refused:
        storage.write_atomic(tmp_path / "a", "new")
    assert hint in str(refused.value)
    assert (tmp_path / "a").read_text() == "old"


def test_a_full_disk_names_the_folder_the_space_needed_and_the_space_free(tmp_path, monkeypatch):
    (tmp_path / "a").write_text("old")
    real_open = open

    class Full:
        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def __getattr__(self, name):
            return getattr(self.file, name)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "open", Full, raising=False)
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda folder: _usage(5e5))
    with pytest.raises(StorageError) as full:
        storage.write_atomic(tmp_path / "a", b"x" * 3_000_000)
    message = str(full.value)
    assert f"folder {tmp_path}" in message and "No space left on device" in message
    assert "need about 3.0 MB there and 0.5 MB are free" in message
    assert (tmp_path / "a").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def _usage(free: float):
    return type("Usage", (), {"free": int(free), "total": int(free), "used": 0})()


def test_the_lock_is_exclusive_across_processes_and_waits(tmp_path, caplog):
    lock = tmp_path / ".g.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from sparse_coding.files import storage\n"
            "with storage.file_lock(Path(sys.argv[1]), what='g'):\n"
            "    print('held', flush=True); time.sleep(1.0)",
            str(lock),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    start = time.perf_counter()
    with caplog.at_level("INFO"), storage.file_lock(lock, what="the graph g"):
        waited = time.perf_counter() - start
    holder.wait(timeout=30)
    assert waited > 0.3 and "waiting for another run to finish writing the graph g" in caplog.text


@pytest.mark.parametrize("target_exists", [False, True])
def test_a_link_at_the_lock_file_is_refused_and_nothing_is_created_through_it(tmp_path, target_exists):
    victim = tmp_path / "victim"
    if target_exists:
        victim.write_text("precious")
    (tmp_path / "data").mkdir()
    lock = tmp_path / "data" / ".g.dot.lock"
    lock.symlink_to(victim)
    with pytest.raises(StorageError, match="symbolic link"), storage.file_lock(lock, what="g"):
        pass
    assert victim.exists() == target_exists and (not target_exists or victim.read_text() == "precious")


def test_threads_of_one_process_take_the_lock_in_turn(tmp_path):
    inside, most = [], []

    def work():
        for _ in range(20):
            with storage.file_lock(tmp_path / ".lock", what="x"):
                inside.append(1)
                most.append(len(inside))
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(most) == 1 and len(most) == 80


def test_the_package_imports_without_posix_only_modules():
    """`import sparse_coding` and its storage layer work where fcntl does not exist (Windows)."""
    code = (
        "import sys; sys.modules['fcntl'] = None; sys.modules['termios'] = None\n"
        "import sparse_coding, sparse_coding.files.storage, sparse_coding.files.cache, sparse_coding.cli\n"
        "import sparse_coding.graphs.graph_files, sparse_coding.labels.neuronpedia\n"
        "from pathlib import Path; import tempfile\n"
        "folder = Path(tempfile.mkdtemp())\n"
        "sparse_coding.files.storage.write_atomic(folder / 'a', 'x')\n"
        "with sparse_coding.files.storage.file_lock(folder / '.lock', what='a'):\n"
        "    pass\n"
        "print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.stdout.strip() == "ok", done.stderr
