"""fast.py: gradient cognition graph (Marks et al. 2024) over resid, attn and mlp SAEs.

Run as `python3 fast.py`, `python3 sparse_coding/fast.py` or `python3 -m sparse_coding.fast`.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package, not its folders as top-level names
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from sparse_coding.cli import run_script
from sparse_coding.pipelines.fast import main

if __name__ == "__main__":
    run_script(main, __doc__.splitlines()[0])
