"""val.py: validate a circuit by ablating it whole (faithfulness and completeness).

Ablates every feature of VALIDATION_DIMS_PINNED (or of a graph's feature nodes,
``--from-graph PATH``) over DATASET or PROMPT, prints how next-token
probabilities and loss change, and writes DATA_DIR/<model>/validation.json.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package, not its folders as top-level names
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from sparse_coding.algorithms.circuits import circuit_and_source, load_circuit_model
from sparse_coding.algorithms.validation import feature_means, validate_circuit
from sparse_coding.algorithms.validation_report import format_report, report_data, write_report
from sparse_coding.cli import build_parser, run_script
from sparse_coding.config import Config
from sparse_coding.corpus import config_batches
from sparse_coding.pipelines.val_pairs import format_pairs_report, pairs_report

DESCRIPTION = "Ablate a circuit whole: next-token change, faithfulness, completeness."


def main(config: Config, args: argparse.Namespace) -> None:
    circuit, source = circuit_and_source(config, args.from_graph)
    spliced, tokenizer = load_circuit_model(config, circuit, source=source)
    batches = list(
        config_batches(config, tokenizer, device=spliced.device, context_len=spliced.model.config.n_positions)
    )
    means = feature_means(spliced, batches, circuit)
    result = validate_circuit(spliced, batches, circuit=circuit, means=means)
    pairs = pairs_report(config, spliced, tokenizer, circuit=circuit, means=means, graph=args.from_graph)
    data = report_data(
        result,
        tokenizer,
        logit_tokens=config.LOGIT_TOKENS,
        source=source,
        data=f"DATASET {config.DATASET!r}" if config.DATASET else f"PROMPT {config.PROMPT!r}",
    )
    path = config.model_data_dir(config.MODEL_DIR) / "validation.json"
    write_report(data | {"pairs": pairs, "config": config.to_metadata()}, path)
    print(format_report(data))
    if pairs is not None:
        print(format_pairs_report(pairs))
    print(f"\nWrote {path}")


if __name__ == "__main__":
    parser = build_parser(DESCRIPTION)
    parser.add_argument(
        "--from-graph",
        type=Path,
        metavar="PATH",
        help="validate the feature nodes of a pipe.py/fast.py graph (.json or .dot)",
    )
    run_script(main, DESCRIPTION, parser=parser)
