"""The offline demo: a planted-circuit GPT-2 with SAEs (`build.py`) and a walkthrough."""
