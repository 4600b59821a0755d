"""fast.py: gradient cognition graph over SAEs; its command is `sparse_coding.cli.fast`."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the package beside it
    from sparse_coding.cli import main

    main("fast")
