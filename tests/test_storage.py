"""storage: atomic writes with umask permissions, journalled multi-file commits, stale temps, safe paths."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_coding import storage
from sparse_coding.errors import StorageError


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


def test_a_commit_interrupted_after_its_journal_is_rolled_forward_by_the_next_reader(tmp_path, monkeypatch):
    a, b, journal = tmp_path / "a", tmp_path / "b", tmp_path / ".a.commit"
    a.write_text("old a")
    b.write_text("old b")
    real_replace, calls = os.replace, []

    def crash_after_first_target(src, dst):
        calls.append(dst)
        if Path(dst) == b:  # the journal and `a` are in place, `b` is not: a mix on disk
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", crash_after_first_target)
    monkeypatch.setattr(storage, "recover", lambda journal: False)  # as if killed: no cleanup ran
    with pytest.raises(KeyboardInterrupt), storage.Commit(journal) as commit:
        commit.write(a, "new a")
        commit.write(b, "new b")
    monkeypatch.undo()
    assert (a.read_text(), b.read_text()) == ("new a", "old b") and journal.exists()
    storage.remove_stale_temps(tmp_path)  # the journal's temps are not stale: they are the new state
    assert storage.recover(journal)
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_a_failed_commit_before_its_journal_changes_nothing_and_leaves_no_temps(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")
    monkeypatch.setattr(storage.os, "chmod", lambda *args: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(StorageError, match=str(tmp_path)), storage.Commit(tmp_path / ".j") as commit:
        commit.write(a, "new a")
        commit.write(b, "new b")
    assert a.read_text() == "old a" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_temps_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".g.dot.{dead_pid}.abc123.tmp"
    live = tmp_path / f".g.dot.{os.getpid()}.def456.tmp"
    pending = tmp_path / f".g.json.{dead_pid}.ghi789.tmp"
    for path in (stale, live, pending):
        path.write_text("x")
    (tmp_path / ".g.dot.commit").write_text(
        json.dumps({"renames": [[str(pending), str(tmp_path / "g.json")]]})
    )
    (tmp_path / "user.tmp").write_text("not ours")
    assert storage.remove_stale_temps(tmp_path) == 1
    assert not stale.exists() and live.exists() and pending.exists() and (tmp_path / "user.tmp").exists()


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


def fingerprint(corpus: Path, weights: Path, **settings) -> dict:
    saes = {"resid_0": storage.sae_identity("my/saes_{layer}", weights)}
    return storage.cache_fingerprint(model="gpt2", saes=saes, dataset=str(corpus), settings=settings)


def test_the_fingerprint_sees_a_corpus_or_weights_file_edited_in_place(tmp_path):
    corpus, weights = tmp_path / "corpus.txt", tmp_path / "sae_weights.safetensors"
    corpus.write_text("one\n")
    weights.write_bytes(b"w1")
    before = fingerprint(corpus, weights, text={"MAX_SEQ_LEN": 64})
    assert (
        storage.fingerprint_differences(before, fingerprint(corpus, weights, text={"MAX_SEQ_LEN": 64})) == []
    )
    stat = corpus.stat()
    corpus.write_text("two\n")  # same size, same name: only the mtime tells
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    (difference,) = storage.fingerprint_differences(
        before, fingerprint(corpus, weights, text={"MAX_SEQ_LEN": 64})
    )
    assert difference.startswith("dataset_identity.local was")
    weights.write_bytes(b"w22")
    changed = storage.fingerprint_differences(before, fingerprint(corpus, weights, text={"MAX_SEQ_LEN": 32}))
    assert "text.MAX_SEQ_LEN was 64, now 32" in changed and any(
        "resid_0 SAE weights changed" in c for c in changed
    )
    assert storage.dataset_identity("Skylion007/openwebtext", revision="abc") == {
        "hub": "Skylion007/openwebtext",
        "revision": "abc",
    }
