"""pipe.py: ablation cognition graph on the residual-stream SAEs (`sparse_coding.cli.pipe`)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the package beside it
    from sparse_coding.cli import main

    main("pipe")
