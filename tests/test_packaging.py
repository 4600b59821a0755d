"""Packaging: the declared requirements are the ones the code needs."""

import ast
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _install_requires() -> dict[str, Requirement]:
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    call = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
    )
    listed = next(k.value for k in call.keywords if k.arg == "install_requires")
    return {(r := Requirement(ast.literal_eval(e))).name: r for e in listed.elts}


def test_setup_requires_the_torch_transformers_5_needs():
    torch = _install_requires()["torch"]
    assert "2.5.1" not in torch.specifier and "2.6.0" in torch.specifier


def test_setup_requires_urllib3_2_for_deadline_reads():
    assert "1.26.18" not in _install_requires()["urllib3"].specifier


def test_readme_gives_pytorchs_own_cpu_install_command():
    """A CPU-only Linux install takes PyTorch's CPU wheels as PyTorch documents it (pytorch.org,
    "Get started": pip, Linux, CPU), not PyPI's CUDA wheel."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    install = readme[readme.index("## Install") : readme.index("## Quick start")]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in install
    assert install.index("download.pytorch.org/whl/cpu") < install.index("pip install -e .")
