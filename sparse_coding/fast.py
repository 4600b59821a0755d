"""fast.py: gradient cognition graph (Marks et al. 2024) over resid, attn and mlp SAEs.

Run as `python3 fast.py`, `python3 sparse_coding/fast.py` or `python3 -m sparse_coding.fast`.
"""

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package, not its folders as top-level names
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from sparse_coding.cli import build_parser, run_script
from sparse_coding.config import Config

logger = logging.getLogger("sparse_coding.fast")


def main(config: Config, args: argparse.Namespace) -> None:
    # Checks first, heavy imports after: importing torch alone takes seconds, --help none.
    from sparse_coding.pipelines.preflight import preflight

    preflight(config, graph_files=(config.GRADS_DOT_FILE, config.GRADS_FILE), min_prompt_tokens=2)

    from sparse_coding.algorithms.attribution_graph import gradient_graph
    from sparse_coding.algorithms.threshold_cache import load_thresholds
    from sparse_coding.graphs.publish import publish_graph
    from sparse_coding.models.gpt2 import tokenize_prompt
    from sparse_coding.models.loading import load_spliced_model

    spliced, tokenizer = load_spliced_model(config)
    tokens = tokenize_prompt(
        tokenizer, config.PROMPT, prepend_bos=config.PREPEND_BOS, max_len=spliced.model.config.n_positions + 1
    )
    thresholds = load_thresholds(config, spliced)
    logger.info(
        "Down-nodes: %s", thresholds.description if thresholds else f"top {config.NUM_DOWN_NODES} |IE|"
    )
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
    )
    print(published.line)


if __name__ == "__main__":
    parser = build_parser(
        __doc__.splitlines()[0],
        outputs=["GRADS_DOT_FILE (.dot) + its .json, GRADS_FILE (image), merged into earlier runs'"],
        keys=[
            "ACTS_LAYERS_SLICE",
            "PROMPT",
            "RESID_SAES",
            "ATTN_SAES",
            "MLP_SAES",
            "NUM_DOWN_NODES",
            "NUM_UP_NODES",
            "IG_STEPS",
            "DATASET (hist.py thresholds, contexts)",
            "SAE_DTYPE",
        ],
        section="fast.py — gradient cognition graph",
    )
    run_script(main, __doc__.splitlines()[0], parser=parser)
