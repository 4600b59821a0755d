"""The package's notebook names: one import away, loaded lazily."""

import importlib
import subprocess
import sys

import pytest

import sparse_coding


@pytest.mark.parametrize("name", sparse_coding.__all__)
def test_each_notebook_name_is_the_object_its_module_defines(name):
    module = importlib.import_module(sparse_coding._EXPORTS[name])
    assert getattr(sparse_coding, name) is getattr(module, name)


def test_importing_the_package_loads_no_torch():
    code = "import sys, sparse_coding; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sparse_coding.nope  # noqa: B018
