"""sparse_coding: circuit discovery in GPT-2 small with sparse autoencoders.

Importing the package does nothing beyond defining names; the scripts
(`pipe.py`, `fast.py`, `val.py`, `hist.py`) and notebooks call into its modules.
"""

__version__ = "0.1.0"
