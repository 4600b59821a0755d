"""fast.py's run: from a Config to the published gradient graph.

The algorithm is `sparse_coding.algorithms.attribution_graph` (Marks et al.
2024; the formulas live in `sparse_coding.algorithms.attribution`); this is
its config glue: the prompt's tokens, hist.py's cached thresholds when they
apply, and publishing the graph.
"""

import logging

from sparse_coding.algorithms.attribution_graph import gradient_graph
from sparse_coding.config import Config
from sparse_coding.graphs.graph_files import check_output_names
from sparse_coding.models.gpt2 import tokenize_prompt
from sparse_coding.phases import PhaseTimer
from sparse_coding.pipelines.loading import load_spliced_model
from sparse_coding.pipelines.publish import publish_graph
from sparse_coding.pipelines.threshold_cache import load_thresholds

logger = logging.getLogger(__name__)


def run_fast(config: Config, phases: PhaseTimer | None = None, *, new_graph: bool = False) -> str:
    """Build fast.py's graph over every configured site of the slice and publish it."""
    phases = phases or PhaseTimer()
    out_dir = config.model_data_dir(config.MODEL_DIR)
    check_output_names(out_dir / config.GRADS_DOT_FILE, out_dir / config.GRADS_FILE)
    spliced, tokenizer = load_spliced_model(config, phases=phases)
    tokens = tokenize_prompt(
        tokenizer, config.PROMPT, prepend_bos=config.PREPEND_BOS, max_len=spliced.model.config.n_positions + 1
    )
    thresholds = load_thresholds(config, spliced)
    logger.info(
        "Down-nodes: %s", thresholds.description if thresholds else f"top {config.NUM_DOWN_NODES} |IE|"
    )
    with phases.phase("compute: gradient graph"):
        graph = gradient_graph(
            spliced,
            tokens,
            num_down_nodes=config.NUM_DOWN_NODES,
            num_up_nodes=config.NUM_UP_NODES,
            ig_steps=config.IG_STEPS,
            thresholds=thresholds.values if thresholds else None,
        )
    published = publish_graph(
        graph,
        config,
        spliced,
        tokenizer,
        dot_name=config.GRADS_DOT_FILE,
        image_name=config.GRADS_FILE,
        script="fast.py",
        phases=phases,
        new_graph=new_graph,
    )
    return published.line
