"""steer.py's run: load the SAEs the plan (`pipelines.steer_plan`) names, generate or sweep, write and report.

Only the SAEs of the intervened and watched nodes are loaded, so every other
site runs plain; TRANSCODERS too when a node is a transcoder feature.
"""

import logging
from datetime import datetime, timezone
from pathlib import Path

from sparse_coding.algorithms.generation import Sampling, left_padded
from sparse_coding.algorithms.response_curve import response_curve
from sparse_coding.algorithms.steering import steer
from sparse_coding.config import Config
from sparse_coding.errors import ConfigError
from sparse_coding.files import storage
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.pipelines.steer_plan import SteerPlan, check_transcoder_nodes
from sparse_coding.pipelines.steer_report import (
    curve_data,
    curve_images,
    format_curve_report,
    format_steering_report,
    steering_data,
    to_json,
)
from sparse_coding.runtime import distributed
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.batches import pad_id
from sparse_coding.text.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def run_steer(config: Config, plan: SteerPlan, phases: PhaseTimer | None = None) -> str:
    """Run `plan` (generation, or its response curve) and write its files; returns the printed report."""
    phases = phases or PhaseTimer()
    spliced, tokenizer = load_spliced_model(
        config, pairs=plan.pairs, source=plan.source, phases=phases, transcoders=plan.transcoders
    )
    check_transcoder_nodes(config, plan, spliced.transcoders)
    run = _run_curve if plan.curve is not None else _run_generation
    return run(config, plan, spliced, tokenizer, phases)


def _run_generation(
    config: Config, plan: SteerPlan, spliced: SplicedModel, tokenizer: Tokenizer, phases: PhaseTimer
) -> str:
    sampling = _sampling(config, spliced, plan)
    with phases.phase("compute: generation"):
        result = steer(
            spliced,
            left_padded(plan.prompts, pad_id(tokenizer), spliced.device),
            plan.edits,
            sampling=sampling,
            num_return_sequences=1 if sampling.greedy else config.NUM_RETURN_SEQUENCES,
            watch=plan.watch,
            top_tokens=config.LOGIT_TOKENS,
        )
    data = steering_data(result, plan, tokenizer, sampling)
    path = config.model_data_dir(config.MODEL_DIR) / "steering.json"
    with phases.phase("write"):
        storage.write_atomic(path, to_json(data | run_record(config)))
    return f"{format_steering_report(data)}\n\nWrote {path}"


def _run_curve(
    config: Config, plan: SteerPlan, spliced: SplicedModel, tokenizer: Tokenizer, phases: PhaseTimer
) -> str:
    batch = distributed.move(plan.batch, spliced.device)
    with phases.phase("compute: response curve"):
        result = response_curve(
            spliced, batch, plan.curve, answer_id=plan.answer_id, top_tokens=config.LOGIT_TOKENS
        )
    data = curve_data(result, plan, tokenizer)
    stem = config.model_data_dir(config.MODEL_DIR) / "response_curve"
    with phases.phase("write"):
        paths = write_curve(data | run_record(config), stem)
    return f"{format_curve_report(data)}\n\nWrote {', '.join(map(str, paths))}"


def run_record(config: Config) -> dict:
    """What every steer.py file records of its run: script, time, processes (one), config."""
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"run": {"script": "steer.py", "time": when, "world_size": 1}, "config": config.to_metadata()}


def _sampling(config: Config, spliced: SplicedModel, plan: SteerPlan) -> Sampling:
    """The config's decoding, checked against the model's context."""
    longest, context = int(plan.batch.lengths.max()), spliced.model.config.n_positions
    if longest + config.MAX_NEW_TOKENS > context:
        raise ConfigError(
            f"MAX_NEW_TOKENS {config.MAX_NEW_TOKENS} after a prompt of {longest} tokens exceeds the model's "
            f"context of {context} positions; set MAX_NEW_TOKENS to at most {max(1, context - longest)}"
        )
    sampling = config.options(Sampling)
    if sampling.greedy and config.NUM_RETURN_SEQUENCES > 1:
        logger.info(
            "NUM_RETURN_SEQUENCES is %d but decoding is greedy (TEMPERATURE 0): the continuations would "
            "be identical, so one per prompt is generated; set TEMPERATURE > 0 to sample",
            config.NUM_RETURN_SEQUENCES,
        )
    return sampling


def write_curve(data: dict, stem: Path) -> list[Path]:
    """``stem``.json, .png and .svg, each written whole (`storage.Commit`)."""
    paths = [stem.with_suffix(suffix) for suffix in (".json", ".png", ".svg")]
    images = curve_images(data)
    with storage.Commit() as commit:  # renamed in this order: the .json last, once its images are in place
        commit.write(paths[1], images["png"])
        commit.write(paths[2], images["svg"])
        commit.write(paths[0], to_json(data))
    return paths
