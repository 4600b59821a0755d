"""Log a run to Weights & Biases when WANDB_PROJECT is set (config key, else the environment).

Each run logs its config, its summary numbers (nodes, edges, explained share,
faithfulness, phase timings: whatever the script measured), the image and the
graph's .json (with the .html) as an artifact. WANDB_ENTITY and WANDB_MODE
(``online``, ``offline``, ``disabled``) are the seed tool's keys, honoured as
it did. W&B is optional (``pip install -e ".[wandb]"``): without the package,
or when W&B fails (no network, a refused key, a full disk), the run warns and
its own files stay written; logging never fails a run.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def wandb_settings(project: str | None, entity: str | None, mode: str | None) -> dict[str, str] | None:
    """project, entity and mode (the config keys), else the environment's; None without a project."""
    values = {
        "project": project or os.environ.get("WANDB_PROJECT"),
        "entity": entity or os.environ.get("WANDB_ENTITY"),
        "mode": mode or os.environ.get("WANDB_MODE"),
    }
    if not values["project"]:
        return None
    return {key: value for key, value in values.items() if value}


def log_run(
    settings: dict[str, str] | None,
    *,
    run_config: Mapping[str, Any],
    script: str,
    summary: Mapping[str, Any],
    files: list[Path],
    image: Path | None = None,
    out_dir: Path,
) -> None:
    """Log one run (see the module doc) with `settings` (`wandb_settings`; None: W&B off); a warning,
    never an exception, when W&B cannot."""
    if settings is None:
        return
    try:
        import wandb
    except ImportError:
        logger.warning(
            'WANDB_PROJECT is set, but wandb is not installed (pip install -e ".[wandb]"): not logged'
        )
        return
    try:  # any failure of the service or the package: the run's own outputs are written already
        out_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            **settings,
            dir=os.environ.get("WANDB_DIR") or str(out_dir),
            job_type=script.removesuffix(".py"),
            config=dict(run_config),
        )
        try:
            run.summary.update(dict(summary))
            if image is not None and image.suffix == ".png" and image.is_file():
                run.log({"graph": wandb.Image(str(image))})
            stem = files[0].with_suffix("").name if files else script
            artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "-", stem), type="graph")
            for path in [*files, *([image] if image is not None else [])]:
                if path.is_file():
                    artifact.add_file(str(path))
            run.log_artifact(artifact)
        finally:
            run.finish()
        logger.info(
            "Logged the run to W&B project %s (%s)", settings["project"], settings.get("mode", "online")
        )
    except Exception as e:  # noqa: BLE001
        logger.warning("W&B logging failed (%s: %s); the run's files are written", type(e).__name__, e)
