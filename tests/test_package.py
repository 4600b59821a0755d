"""The package's notebook names: one import away, loaded lazily."""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sparse_coding

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sparse_coding.__all__)
def test_each_notebook_name_is_the_object_its_module_defines(name):
    module = importlib.import_module(sparse_coding._EXPORTS[name])
    assert getattr(sparse_coding, name) is getattr(module, name)


def test_importing_the_package_loads_no_torch():
    code = "import sys, sparse_coding; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_scripts_and_the_demo_tokenizer_load_without_transformers():
    """Importing transformers slows every start; `sparse_coding.text.tokenizer` reads the files without it."""
    code = (
        "import sys\n"
        "import sparse_coding.pipelines.pipe, sparse_coding.pipelines.fast\n"
        "import sparse_coding.pipelines.val, sparse_coding.pipelines.hist\n"
        "from sparse_coding.models.gpt2 import load_tokenizer, tokenize_prompt\n"
        "tokenize_prompt(load_tokenizer('sparse_coding/demo/model'), 'the sky is blue', prepend_bos=True)\n"
        "print('transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sparse_coding.nope  # noqa: B018


@pytest.mark.parametrize("script", ["pipe", "fast", "val", "hist", "steer", "trace"])
def test_the_console_command_hands_each_script_its_own_arguments(script, capsys):
    from sparse_coding.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv=[script, "--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith(f"usage: sparse-coding {script} ") and "--config" in usage
    assert ("--from-graph" in usage) == (script in ("val", "steer"))


def test_the_console_command_without_a_script_lists_the_scripts(capsys):
    from sparse_coding.cli import main

    with pytest.raises(SystemExit) as done:
        main(argv=["plot"])
    assert done.value.code == 2
    assert "sparse-coding {pipe|fast|val|hist|steer|trace|demo|export|upload}" in capsys.readouterr().err


def test_the_installed_package_declares_the_console_command():
    from importlib.metadata import entry_points

    (command,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "sparse-coding"]
    assert command.value == "sparse_coding.cli:main"


def test_python_m_sparse_coding_answers_help_without_importing_torch():
    code = (
        "import sys, runpy\n"
        "sys.argv = ['sparse_coding', 'fast', '--help']\n"
        "try:\n    runpy.run_module('sparse_coding', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: sparse-coding fast" in out.stdout and out.stdout.strip().endswith("False")


def test_a_config_error_is_reported_before_torch_is_imported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("IG_STEPS: many\n")
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['sparse_coding', 'pipe', '--config', {str(bad)!r}]\n"
        "try:\n    runpy.run_module('sparse_coding', run_name='__main__')\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "IG_STEPS" in out.stderr and out.stdout.split() == ["1", "False"]


@pytest.mark.parametrize(
    ("orig_argv", "started"),
    [
        (["python3", "SCRIPT", "--config", "c.yaml"], True),
        (["python3", "-X", "importtime", "-u", "SCRIPT"], True),
        (["python3", "-m", "sparse_coding.pipe", "-q"], True),
        (["/usr/bin/python3", "/usr/local/bin/sparse-coding", "pipe"], True),
        (["python3", "-m", "pytest", "tests"], False),  # runpy of the script inside a test
        (["python", "-m", "ipykernel_launcher", "-f", "kernel.json"], False),  # a notebook's %run
        (["python3", "-c", "import runpy"], False),
        (["python3", "other.py"], False),
    ],
)
def test_a_script_skips_python_teardown_only_as_the_process_own_program(monkeypatch, orig_argv, started):
    """os._exit inside a notebook kernel or a test run would end that process too."""
    from sparse_coding import cli

    script = str(REPO / "sparse_coding" / "pipe.py")
    monkeypatch.setattr(sys, "orig_argv", [script if arg == "SCRIPT" else arg for arg in orig_argv])
    assert cli._started_as((script, "sparse_coding.pipe", "sparse-coding")) is started


def test_python_i_keeps_its_prompt_after_the_script(tmp_path):
    """`python3 -i pipe.py` leaves the researcher at a prompt with the run's names: no early exit."""
    script = tmp_path / "probe.py"
    script.write_text("from sparse_coding import cli\nprint(cli._started_as([__file__]))\n")

    def started(**env: str) -> str:
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ | {"PYTHONPATH": str(REPO), **env},
            input="",  # the interactive prompt, if any, reads end of input and exits
        )
        return done.stdout.split()[0]

    assert started() == "True"
    assert started(PYTHONINSPECT="1") == "False"
