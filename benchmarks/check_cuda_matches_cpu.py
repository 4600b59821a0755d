"""Check that fast.py's attributions and pipe.py's ablation graph on CUDA match CPU (tiny random model).

    python3 benchmarks/check_cuda_matches_cpu.py

Builds the test suite's tiny GPT-2 and SAEs, runs attribution and the
ablation graph on both devices in float32 and prints the largest
differences. Needs a CUDA device.
"""

import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import build_tiny_gpt2, write_sae_set  # noqa: E402

from sparse_coding.algorithms.ablation_graph import ablation_graph  # noqa: E402
from sparse_coding.algorithms.attribution import node_attributions  # noqa: E402
from sparse_coding.algorithms.attribution_edges import edges  # noqa: E402
from sparse_coding.algorithms.attribution_graph import GraphOptions, choose_down_nodes, summarize  # noqa: E402
from sparse_coding.algorithms.metrics import METRICS  # noqa: E402
from sparse_coding.config import config_from_dict  # noqa: E402
from sparse_coding.models.gpt2 import tokenize_prompt  # noqa: E402
from sparse_coding.pipelines.loading import load_spliced_model  # noqa: E402
from sparse_coding.text.batches import TokenBatch  # noqa: E402
from sparse_coding.text.pairs import token_batch  # noqa: E402

PROMPT = "When Mary and John went to the store, John gave"


def _config(device: str, root: Path, templates: dict[str, str]):
    return config_from_dict(
        {
            "MODEL_DIR": str(root / "model"),
            "RESID_SAES": templates["resid"],
            "ATTN_SAES": templates["attn"],
            "MLP_SAES": templates["mlp"],
            "ACTS_LAYERS_SLICE": "0:3",
            "DEVICE": device,
        }
    )


def attributions_on(device: str, root: Path, templates: dict[str, str]):
    spliced, tokenizer = load_spliced_model(_config(device, root, templates))
    tokens = tokenize_prompt(tokenizer, PROMPT, prepend_bos=True)
    batch = token_batch(tokens.to(spliced.device))
    metric = METRICS["cross_entropy"]
    attrs = node_attributions(spliced, batch, metric=metric)
    down = choose_down_nodes(summarize([attrs]), GraphOptions(metric, num_down_nodes=3))
    down_cpu = {k: v.cpu() for k, v in down.items()}
    return attrs, down_cpu, spliced, batch


def ablation_on(device: str, root: Path, templates: dict[str, str]):
    spliced, tokenizer = load_spliced_model(_config(device, root, templates), sites=("resid",))
    ids = tokenize_prompt(tokenizer, PROMPT, prepend_bos=True).to(spliced.device)
    batch = TokenBatch(ids, torch.ones_like(ids), 0)
    return ablation_graph(spliced, batch, tokenizer=tokenizer, layers=[0, 1, 2], threshold_exp=None).graph


def compare_ablation_graphs(root: Path, templates: dict[str, str]) -> None:
    cpu, gpu = (ablation_on(device, root, templates) for device in ("cpu", "cuda"))
    effect = {name: {k: e.effect for k, e in g.edges.items()} for name, g in (("cpu", cpu), ("gpu", gpu))}
    edge_diff = max(
        abs(effect["cpu"].get(k, 0.0) - effect["gpu"].get(k, 0.0)) for k in set(cpu.edges) | set(gpu.edges)
    )
    cell_diff = max(
        abs(a - b)
        for node_id, node in cpu.nodes.items()
        for (_, a), (_, b) in zip(node.logits_up, gpu.nodes[node_id].logits_up, strict=False)
    )
    print(
        f"pipe.py ablation graph on cuda vs cpu: {len(cpu.edges)} / {len(gpu.edges)} edges, "
        f"max edge diff {edge_diff:.2e}, max logit cell diff {cell_diff:.2e}"
    )


def main() -> None:
    root = Path(tempfile.mkdtemp())
    build_tiny_gpt2(root / "model")
    templates = {site: write_sae_set(root / "saes", site) for site in ("resid", "attn", "mlp")}
    cpu_attrs, down, cpu_model, cpu_inputs = attributions_on("cpu", root, templates)
    gpu_attrs, _, gpu_model, gpu_inputs = attributions_on("cuda", root, templates)
    node_diff = max(
        float((cpu_attrs[k].feature_ie - gpu_attrs[k].feature_ie.cpu()).abs().max()) for k in cpu_attrs
    )
    print(f"max |IE(cpu) - IE(cuda)| over features: {node_diff:.2e}")
    cpu_edges = edges(cpu_model, cpu_inputs, cpu_attrs, down, batched=False)
    for batched in (False, True):
        gpu_edges = edges(
            gpu_model, gpu_inputs, gpu_attrs, {k: v.cuda() for k, v in down.items()}, batched=batched
        )
        diff = max(
            float((a.effects - b.effects.cpu()).abs().max())
            for a, b in zip(cpu_edges, gpu_edges, strict=True)
        )
        scale = max(float(a.effects.abs().max()) for a in cpu_edges)
        print(
            f"edges {'batched' if batched else 'per-node'} on cuda vs cpu: max diff {diff:.2e} "
            f"(largest edge {scale:.2e})"
        )
    compare_ablation_graphs(root, templates)


if __name__ == "__main__":
    main()
