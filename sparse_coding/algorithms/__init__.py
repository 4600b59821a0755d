"""The algorithms: attribution (fast.py), ablation (pipe.py), validation (val.py), thresholds (hist.py)."""
