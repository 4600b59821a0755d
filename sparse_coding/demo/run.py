"""`sparse-coding demo [OUT_DIR]`: the offline demo's fast.py, pipe.py and val.py, written to OUT_DIR.

For an installed package or a container, where the repository's demo config
would write inside the package: OUT_DIR/config.yaml is the demo config with
its paths made absolute and DATA_DIR "." (outputs beside it, in
OUT_DIR/demo_model/), so the run can be edited and repeated with any script's
``--config OUT_DIR/config.yaml``.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

import yaml

from sparse_coding.config import PACKAGE_DIR
from sparse_coding.config.paths import resolve_paths
from sparse_coding.config.yaml_file import read_yaml

DEMO_CONFIG = PACKAGE_DIR / "config" / "demo_config.yaml"
DEFAULT_OUT = "sparse_coding_demo"
HEADER = (
    "# The offline demo (sparse_coding/config/demo_config.yaml) with its paths made absolute;\n"
    "# outputs go to demo_model/ beside this file. Edit it and rerun any script with --config.\n"
)


def write_demo_config(out_dir: Path) -> Path:
    """OUT_DIR/config.yaml: the demo config, runnable from anywhere, writing beside itself."""
    raw = read_yaml(DEMO_CONFIG)
    raw = resolve_paths(raw, DEMO_CONFIG.parent) | {"DATA_DIR": "."}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "config.yaml"
    path.write_text(HEADER + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def run(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """Write the demo config into OUT_DIR and run fast.py, pipe.py and val.py on it, quietly."""
    from sparse_coding.cli import run as run_command

    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument(
        "out_dir", nargs="?", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    config = write_demo_config(Path(args.out_dir))
    print(f"demo: config {config}")
    for script in ("fast", "pipe", "val"):
        run_command(script, ["--config", str(config), "-q"], prog=f"{script}.py")
