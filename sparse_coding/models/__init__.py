"""Loading GPT-2 and SAEs: hub ids or local folders, SAELens folder formats, memory checks."""
