"""steer.py: test a graph by intervening on features and generating (`sparse_coding.cli.steer`)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the package beside it
    from sparse_coding.cli import main

    main("steer")
