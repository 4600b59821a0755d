"""What the memory check demands for GPT-2 small with the published SAEs, per script, width and dtype.

    python3 benchmarks/memory_table.py [--prompt-tokens 4]

The numbers are the check's own (`sparse_coding.models.memory.estimate` on the
passes `pipelines.loading.script_passes` gives each script), for SAE configs of
the published sizes (d_in 768; 32768 or 131072 latents, TopK-32), on a CUDA
device, where free memory is read after the model is loaded: the model
itself (GPT-2 small, 124M parameters) comes on top. `--prompt-tokens 4` is
the default PROMPT "Copyright (C)" without BOS, as the default SAEs were
trained. Nothing is downloaded.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparse_coding.config import config_from_dict  # noqa: E402
from sparse_coding.models.memory import estimate  # noqa: E402
from sparse_coding.models.saes import SAEConfig  # noqa: E402
from sparse_coding.pipelines.loading import script_passes  # noqa: E402

GPT2_SMALL_PARAMETERS = 124_439_808  # wte, wpe, 12 blocks, ln_f (lm_head tied)
HOOKS = {"resid": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}


def cfgs(d_sae: int, sites: tuple[str, ...], layers: range) -> list[SAEConfig]:
    return [
        SAEConfig(
            d_in=768, d_sae=d_sae, hook_name=f"blocks.{layer}.{HOOKS[site]}", activation="topk", k=32,
            normalize_activations="layer_norm", apply_b_dec_to_input=True, prepend_bos=False,
            center_writing_weights=False, neuronpedia_id=None, source=f"{site} {layer}",
        )  # fmt: skip
        for layer in layers
        for site in sites
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=4)
    parser.add_argument("--slice", default=":")
    args = parser.parse_args()
    config = config_from_dict({"ACTS_LAYERS_SLICE": args.slice})
    layers = config.layer_range(12)
    print(f"GPT-2 small itself: {GPT2_SMALL_PARAMETERS * 4 / 2**30:.2f} GiB in float32, loaded first\n")
    print("| script | SAEs | width | SAE_DTYPE | weights GiB | working set GiB | check demands GiB |")
    print("|---|---|---|---|---|---|---|")
    runs = [
        ("fast.py", ("resid", "attn", "mlp"), config),
        ("fast.py + DATASET", ("resid", "attn", "mlp"), config_from_dict({"DATASET": "texts.txt"})),
        ("pipe.py", ("resid",), config),
        ("hist.py", ("resid", "attn", "mlp"), config),
        ("val.py", ("resid", "attn", "mlp"), config),
    ]
    for script, sites, run_config in runs:
        passes = script_passes(run_config, script.split(".")[0], args.prompt_tokens)
        for width, d_sae in (("32k", 32768), ("128k", 131072)):
            for dtype in (torch.float32, torch.bfloat16):
                chosen = cfgs(d_sae, sites, layers)
                need = estimate(chosen, dtype, passes, d_vocab=50257, device_type="cuda")
                print(
                    f"| {script} | {len(chosen)} | {width} | {str(dtype).split('.')[1]} | "
                    f"{need.weights / 2**30:.2f} | {need.working / 2**30:.2f} | {need.total / 2**30:.2f} |"
                )


if __name__ == "__main__":
    main()
