"""val.py: validate a circuit by ablating it whole (faithfulness, completeness; `sparse_coding.cli.val`)."""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the package beside it
    from sparse_coding.cli import main

    main("val")
