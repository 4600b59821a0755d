"""The floors bench_e2e's phases are measured against, on this machine.

    python3 benchmarks/bench_floors.py [--work DIR] [--runs 3]

Uses the model and SAEs bench_e2e.py wrote into --work (run it first), and prints:

- imports: `python3 -c pass`, `import torch` and `import transformers` as
  whole processes (min of --runs), the floor under every script's start;
- weights: bytes of the model and the slice's SAE files, and the rate at which
  they are read from the page cache (the floor of a cold model/SAE touch);
- compute: the matrix-product rate of this CPU (GFLOP/s on an encoder-shaped
  product), and the matrix-product FLOPs of pipe.py's and fast.py's compute
  phases on bench_e2e's configs (torch's FlopCounterMode), so that FLOPs /
  rate is the compute floor to set against the phase's measured time.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_e2e import RUNS, config_file  # noqa: E402

from sparse_coding.config import load_config  # noqa: E402
from sparse_coding.pipelines.fast import fast_graph  # noqa: E402
from sparse_coding.pipelines.loading import load_spliced_model  # noqa: E402
from sparse_coding.pipelines.pipe import pipe_graph  # noqa: E402


def process_seconds(code: str, runs: int) -> float:
    """Min wall seconds of `python3 -c code` as a whole process."""
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        walls.append(time.perf_counter() - start)
    return min(walls)


def read_rate(files: list[Path], chunk: int = 64 << 20) -> tuple[int, float]:
    """Total bytes of `files` and GB/s copying them out of the page cache into one reused buffer
    (after a first pass puts them there): what touching cached weights costs at least."""
    buffer = memoryview(bytearray(chunk))

    def read_all() -> int:
        total = 0
        for path in files:
            with path.open("rb", buffering=0) as f:
                while n := f.readinto(buffer):
                    total += n
        return total

    read_all()
    start = time.perf_counter()
    total = read_all()
    return total, total / (time.perf_counter() - start) / 1e9


def matmul_rate(rows: int = 840, d_in: int = 768, d_out: int = 24576) -> float:
    """GFLOP/s of an encoder-shaped float32 product (pipe.py's largest)."""
    a, w = torch.randn(rows, d_in), torch.randn(d_in, d_out)
    a @ w
    start = time.perf_counter()
    for _ in range(5):
        a @ w
    return 5 * 2 * rows * d_in * d_out / (time.perf_counter() - start) / 1e9


def compute_flops(work: Path, layers: range) -> dict[str, tuple[float, float]]:
    """Per run: (matrix-product GFLOP, seconds) of its compute phase, in this process (min of 2)."""
    out = {}
    for title, (script, overrides, _) in RUNS.items():
        config = load_config(config_file(work, "cpu", layers, overrides))
        sites = ("resid",) if script == "pipe.py" else None
        spliced, tokenizer = load_spliced_model(config, sites=sites)
        compute = pipe_graph if script == "pipe.py" else fast_graph
        options = {"allow_empty": True} if script == "pipe.py" else {}
        compute(config, spliced, tokenizer, **options)  # touch the weights once
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            compute(config, spliced, tokenizer, **options)
            seconds.append(time.perf_counter() - start)
        counter = FlopCounterMode(display=False)
        with counter:
            compute(config, spliced, tokenizer, **options)
        out[title] = (counter.get_total_flops() / 1e9, min(seconds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sparse_coding_bench_e2e")
    parser.add_argument("--slice", default="9:12")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    layers = range(*(int(part) for part in args.slice.split(":")))
    print(f"imports, whole process, min of {args.runs}:")
    for name, code in [("python3 -c pass", "pass"), ("import torch", "import torch")]:
        print(f"  {name:<28} {process_seconds(code, args.runs):6.2f} s")
    print(f"  {'import transformers':<28} {process_seconds('import transformers', args.runs):6.2f} s")
    files = [args.work / "model" / "model.safetensors"] + [
        args.work / "saes" / f"{site}_{layer}" / "sae_weights.safetensors"
        for layer in layers
        for site in ("resid", "attn", "mlp")
    ]
    total, rate = read_rate(files)
    print(f"weights: {total / 1e9:.2f} GB (model + slice SAEs), read from the page cache at {rate:.1f} GB/s")
    rate = matmul_rate()
    print(f"matrix products: {rate:.0f} GFLOP/s (840 x 768 @ 768 x 24576, float32)")
    print("compute phases in-process (min of 2 after a warm-up) and their matrix-product floor:")
    for title, (gflop, seconds) in compute_flops(args.work, layers).items():
        print(f"  {title:<42} {seconds:6.2f} s, {gflop:7.1f} GFLOP = {gflop / rate:5.2f} s at that rate")


if __name__ == "__main__":
    main()
