"""Whole-process time of fast.py and pipe.py as a researcher runs them, phase by phase.

    python3 benchmarks/bench_e2e.py [--runs 3] [--work DIR] [--device cpu] [--slice 9:12]

Writes (once, into --work) a GPT-2-small-shaped random model in Hugging Face
format and real-size random SAEs in SAELens folders (resid 24576 ReLU with
calibrated biases, attn/mlp 32768 TopK-32 layer-norm), then runs each script
as a subprocess `--runs` times on `--slice` (SAEs are written for its layers) and a
10-token prompt:
fast.py, pipe.py with THRESHOLD_EXP 5, -6 and -7.9 (see RUNS), and pipe.py with every non-zero edge.
Prints the phase table that every run logs with -v (min / median over the runs) and
the wall time measured around the process.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from random_weights import calibrate_saes, random_sae  # noqa: E402

from sparse_coding.models.gpt2 import load_model  # noqa: E402
from sparse_coding.models.saes import SAE  # noqa: E402
from sparse_coding.splicing.splice import SplicedModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The Eiffel Tower is in the city of Paris"
# Written into each layer's marker: SAEs built by an older random_weights recipe are rebuilt.
SAE_RECIPE = "random_weights.calibrate_saes: b_dec centred on 512 tokens, ReLU biases on 11"
ROW = re.compile(r"^\s+(.+?)\s+([\d.]+)s\s+[\d.]+%$")
PEAK = re.compile(r"peak GPU memory ([\d.]+) GiB")
RUNS = {
    "fast.py": ("fast.py", {}, []),
    # Random weights move features far less than trained ones (largest effect ~0.02 here):
    # THRESHOLD_EXP 5 keeps no edge, which exits 1 unless --allow-empty (an empty graph).
    # -6 keeps the few largest (2 edges); -7.9 is what pipe.py names for the top 100
    # first-layer edges (224 edges, 81 nodes).
    "pipe.py (THRESHOLD_EXP 5, --allow-empty)": ("pipe.py", {"THRESHOLD_EXP": 5.0}, ["--allow-empty"]),
    "pipe.py (THRESHOLD_EXP -6)": ("pipe.py", {"THRESHOLD_EXP": -6.0}, []),
    "pipe.py (THRESHOLD_EXP -7.9)": ("pipe.py", {"THRESHOLD_EXP": -7.9}, []),
    "pipe.py (every non-zero edge)": ("pipe.py", {"THRESHOLD_EXP": None}, []),
}


def write_model(path: Path) -> None:
    """GPT2Config() defaults with random weights, and a small byte-level tokenizer (ids < 50257)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = [PROMPT, "Copyright (C) the authors.", "When Mary and John went to the store"]
    bpe.train_from_iterator(corpus * 8, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    config = GPT2Config(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def write_sae(sae: SAE, folder: Path) -> None:
    """One SAE as a SAELens folder (cfg.json + sae_weights.safetensors)."""
    cfg = sae.cfg
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "hook_name": cfg.hook_name,
        "architecture": "topk" if cfg.activation == "topk" else "standard",
        "normalize_activations": cfg.normalize_activations,
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "prepend_bos": True,
        "dtype": "float32",
        "model_from_pretrained_kwargs": {"center_writing_weights": cfg.center_writing_weights},
    }
    if cfg.k:
        spec["activation_fn_kwargs"] = {"k": cfg.k}
    (folder / "cfg.json").write_text(json.dumps(spec))
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    weights = {name: getattr(sae, name).detach().contiguous() for name in names}
    save_file(weights, str(folder / "sae_weights.safetensors"))


def _built(marker: Path) -> bool:
    """The layer's SAEs are on disk and come from this SAE_RECIPE."""
    return marker.is_file() and marker.read_text() == SAE_RECIPE


def build(work: Path, layers: range) -> None:
    """The random model and the slice's SAEs, written once (marker files say what is complete)."""
    if not (work / "complete").is_file():
        write_model(work / "model")
        (work / "complete").write_text("ok")
    missing = [layer for layer in layers if not _built(work / "saes" / f"layers_{layer}_complete")]
    if not missing:
        return
    shapes = (("resid_pre", 24576, False), ("attn_out", 32768, True), ("mlp_out", 32768, True))
    saes = []
    for layer in missing:  # seeded per layer: the same SAEs whichever slice built them
        gen = torch.Generator().manual_seed(layer)
        saes += [random_sae(f"blocks.{layer}.hook_{hook}", d, topk, "cpu", gen) for hook, d, topk in shapes]
    model, _ = load_model(str(work / "model"), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    prompt_like, text = (
        torch.randint(0, 300, (1, 11), generator=gen),
        torch.randint(0, 300, (8, 64), generator=gen),
    )
    calibrate_saes(SplicedModel(model, saes), prompt_like, centre_on=text)
    for sae in saes:
        site = {"resid_pre": "resid", "attn_out": "attn", "mlp_out": "mlp"}[sae.hook_name.split("hook_")[1]]
        write_sae(sae, work / "saes" / f"{site}_{sae.layer}")
    for layer in missing:
        (work / "saes" / f"layers_{layer}_complete").write_text(SAE_RECIPE)


def config_file(work: Path, device: str, layers: range, overrides: dict) -> Path:
    config = {
        "MODEL_DIR": str(work / "model"),
        "RESID_SAES": str(work / "saes" / "resid_{layer}"),
        "ATTN_SAES": str(work / "saes" / "attn_{layer}"),
        "MLP_SAES": str(work / "saes" / "mlp_{layer}"),
        "ACTS_LAYERS_SLICE": f"{layers.start}:{layers.stop}",
        "PROMPT": PROMPT,
        "DEVICE": device,
        "NEURONPEDIA": False,
    } | overrides
    path = Path(tempfile.mkdtemp(dir=work)) / "config.yaml"
    config["DATA_DIR"] = str(path.parent / "data")
    path.write_text(yaml.safe_dump(config))
    return path


def run_once(script: str, config: Path, extra: list[str]) -> tuple[float, dict[str, float]]:
    """Wall seconds around the process, and the phase table it logged."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(REPO / "sparse_coding" / script), "--config", str(config), "-v", *extra],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home())},
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{script} exited {done.returncode}:\n{done.stderr[-3000:]}")
    table = done.stderr[done.stderr.index("Wall time by phase:") :].splitlines()[1:]
    phases = {m[1]: float(m[2]) for line in table if (m := ROW.match(line))}
    if peak := PEAK.search(done.stderr):  # CUDA runs: torch.cuda.max_memory_allocated
        phases["peak GPU memory (GiB)"] = float(peak[1])
    return wall, phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sparse_coding_bench_e2e")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slice", default="9:12")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    layers = range(*(int(part) for part in args.slice.split(":")))
    build(args.work, layers)
    for title, (script, overrides, extra) in RUNS.items():
        configs = [config_file(args.work, args.device, layers, overrides) for _ in range(args.runs)]
        runs = [run_once(script, config, extra) for config in configs]
        print(f"\n{title}, slice {args.slice}, {args.device}, {args.runs} runs: min / median seconds")
        names = list(dict.fromkeys(name for _, phases in runs for name in phases))
        for name in names:
            values = [phases.get(name, 0.0) for _, phases in runs]
            print(f"  {name:<26} {min(values):7.2f} {statistics.median(values):7.2f}")
        walls = [wall for wall, _ in runs]
        print(f"  {'process (measured outside)':<26} {min(walls):7.2f} {statistics.median(walls):7.2f}")


if __name__ == "__main__":
    main()
