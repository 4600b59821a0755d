"""Build the planted-circuit demo: a 3-layer GPT-2 whose weights implement known mechanisms.

Run ``python3 -m sparse_coding.demo.build [OUT_DIR]`` (default: this folder).
Everything follows from `SEED`; the files are committed, so nobody needs to run it.

The model (`model/`, a real `GPT2LMHeadModel` with a word-level tokenizer),
one SAE per site (`saes/{site}_{layer}/`, SAELens folders), one transcoder per
MLP (`transcoders/mlp_{layer}/`, SAELens "transcoder" folders, for trace.py)
and the truth (`circuit.json`) are written from the tables in `planted` (the
mechanisms, the prompt, the corpus and the planted edges).

Why it is exact where the tests need it:
- A large constant direction (`BIAS_NORM`, through the position embeddings)
  makes every layer norm almost linear: content of size ~1 changes its scale
  by ~1e-4, so readers see amounts, not unit vectors.
- Directions use disjoint coordinate pairs (e_2k - e_2k+1): mean-free, so
  layer norm does not mix them, and readers of one ignore the others exactly.
- attn_0's keys and values read only "sun" and attn_1/attn_2 move nothing,
  so nothing else at another position reaches the last one: the distractors
  there have exactly zero effect (and zero gradient) on the prediction.
- The neurons that read sun_seen, heat and light at the last position erase
  them, so that position holds only circuit features (anything else there
  would couple to the prediction through the layer norms' scale).
- SAEs are JumpReLU with zero encoder bias and exact (dual-basis) encoders:
  a feature's activation is its direction's amount.
- Transcoders are the MLPs themselves: feature i is neuron i (encoder = c_fc's
  column, decoder = c_proj's row, ReLU on ln_2's output, whose gain is 1 and
  bias 0), padded with dead features, so their errors are zero up to rounding.
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from sparse_coding.demo.planted import (
    ATTENTION_COPIES,
    BEFORE_LAST_POSITION,
    BOS,
    CIRCUIT,
    CONTENT_FREE,
    CORPUS,
    DIRECT_EDGES,
    DIRECTIONS,
    NEURONS,
    PROMPT,
    RESID_EDGES,
    TARGET,
    TOKENS,
    TRACE_EDGES,
    TRACE_PROMPT,
    UNEMBED,
)
from sparse_coding.nodes import site_key

SEED = 0
D_MODEL = 64
N_LAYERS = 3
N_POSITIONS = 32
BIAS_NORM = 100.0  # amount of the constant "bias" direction at every position
SAE_THRESHOLD = 0.05  # JumpReLU threshold of every SAE feature
SAE_WIDTHS = {"resid": 24, "attn": 8, "mlp": 8}
ATTENTION_SCORE = 400.0  # attention score of a "sun" position (all others score 0)


class Geometry:
    """Seeded placement of named directions on disjoint coordinate pairs."""

    def __init__(self, rng: np.random.Generator) -> None:
        pairs = rng.permutation(D_MODEL // 2)
        self.pair = {name: int(p) for name, p in zip(DIRECTIONS, pairs, strict=False)}
        self.unused = [int(p) for p in pairs[len(DIRECTIONS) :]]

    def vector(self, name: str) -> torch.Tensor:
        """The direction (d_model,): +1 and -1 on its coordinate pair (mean-free)."""
        return pair_vector(self.pair[name])

    def reader(self, name: str) -> torch.Tensor:
        """w with w . ln(x) = the amount of `name` in x (layer norm scale of the bias direction)."""
        ln_scale = (D_MODEL / (2 * BIAS_NORM**2)) ** 0.5  # ln(x) = x * ln_scale, content << bias
        return self.vector(name) / (2 * ln_scale)


def pair_vector(pair: int) -> torch.Tensor:
    v = torch.zeros(D_MODEL)
    v[2 * pair], v[2 * pair + 1] = 1.0, -1.0
    return v


# ----------------------------------------------------------------- the model


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over TOKENS, saved as tokenizer.json (loads offline)."""
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOKENS)}, unk_token=BOS))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=BOS, unk_token=BOS)


def build_model(geometry: Geometry) -> GPT2LMHeadModel:
    """The GPT2LMHeadModel implementing ATTENTION_COPIES, NEURONS and UNEMBED."""
    config = GPT2Config(
        vocab_size=len(TOKENS),
        n_positions=N_POSITIONS,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=1,
        n_inner=max(len(n) for n in NEURONS.values()),
        activation_function="relu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):  # layer norms: the identity
                param.zero_()
        transformer = model.transformer
        transformer.wpe.weight[:] = BIAS_NORM * geometry.vector("bias")
        for index, token in enumerate(TOKENS):
            if token not in CONTENT_FREE:
                transformer.wte.weight[index] = geometry.vector(token)
        for layer, (read, write) in ATTENTION_COPIES.items():
            _plant_copy_head(transformer.h[layer].attn, geometry, read, write)
        for layer, neurons in NEURONS.items():
            mlp = transformer.h[layer].mlp
            for i, neuron in enumerate(neurons):
                mlp.c_fc.weight[:, i] = sum(w * geometry.reader(name) for name, w in neuron.reads.items())
                mlp.c_proj.weight[i] = _write_vector(geometry, neuron.writes)
        for token, (direction, gain) in UNEMBED.items():
            model.lm_head.weight[TOKENS.index(token)] = gain * geometry.reader(direction)
    return model.eval()


def _plant_copy_head(attn: torch.nn.Module, geometry: Geometry, read: str, write: str) -> None:
    """Constant query, keys = ATTENTION_SCORE * amount of `read`, values copy it into `write`.

    c_attn maps ln(x) to [q | k | v] (Conv1D: x @ W + b); head coordinate 0
    carries the score, coordinate 1 the copied amount.
    """
    d = D_MODEL
    attn.c_attn.bias[0] = 1.0  # q = e_0 at every position
    attn.c_attn.weight[:, d] = ATTENTION_SCORE * d**0.5 * geometry.reader(read)  # k_0, before / sqrt(d_head)
    attn.c_attn.weight[:, 2 * d + 1] = geometry.reader(read)  # v_1 = amount of `read`
    attn.c_proj.weight[1] = geometry.vector(write)


def _write_vector(geometry: Geometry, writes: dict[str, float]) -> torch.Tensor:
    return sum((amount * geometry.vector(name) for name, amount in writes.items()), torch.zeros(D_MODEL))


# ------------------------------------------------------------------ the SAEs


def build_sae(site: str, layer: int, geometry: Geometry, rng: np.random.Generator) -> tuple[dict, list[str]]:
    """SAELens weights of one site and the name of each feature index ("dead_k" for dead ones).

    Live features (those that can fire at the site): decoder = the planted vector, encoder = its dual
    basis, so the activation is the planted amount. Dead features read and write random mixtures of
    unused coordinate pairs, which nothing ever writes.
    """
    if site == "resid":
        live = {name: geometry.vector(name) for name in DIRECTIONS if name != "bias"}
    elif site == "attn":
        live = {write: geometry.vector(write) for _, write in ATTENTION_COPIES.values()}
    else:
        live = {n.name: _write_vector(geometry, n.writes) for n in NEURONS.get(layer, [])}
    width = SAE_WIDTHS[site]
    n_dead = width - len(live)
    unused = torch.stack([pair_vector(p) for p in geometry.unused])  # (n_unused, d_in)
    mixtures = torch.from_numpy(rng.standard_normal((n_dead, len(unused)))).float()
    dead = {f"dead_{k}": row @ unused for k, row in enumerate(mixtures)}
    names = [*live, *dead]
    order = rng.permutation(width)
    names = [names[i] for i in order]
    decoder = torch.stack([(live | dead)[name] for name in names])  # (d_sae, d_in)
    weights = {
        "W_enc": _dual_basis(decoder),  # (d_in, d_sae)
        "b_enc": torch.zeros(width),
        "W_dec": decoder.contiguous(),
        "b_dec": BIAS_NORM * geometry.vector("bias") if site == "resid" else torch.zeros(D_MODEL),
        "threshold": torch.full((width,), SAE_THRESHOLD),
    }
    return weights, names


def _dual_basis(decoder: torch.Tensor) -> torch.Tensor:
    """Encoder (d_in, d_sae) with decoder @ encoder = identity; float64 round-off dropped.

    Entries below 1e-9 are exactly zero in the planted geometry (the rows live
    on disjoint coordinate pairs); keeping them would make features that share
    no coordinates interact by ~1e-17.
    """
    dual = torch.linalg.pinv(decoder.double())
    return dual.where(dual.abs() > 1e-9, 0.0).float().contiguous()


HOOKS = {"resid": "hook_resid_pre", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}


def sae_cfg(site: str, layer: int) -> dict:
    """cfg.json in SAELens' format (JumpReLU, no input normalisation, no centring)."""
    return {
        "architecture": "jumprelu",
        "d_in": D_MODEL,
        "d_sae": SAE_WIDTHS[site],
        "dtype": "float32",
        "hook_name": f"blocks.{layer}.{HOOKS[site]}",
        "model_name": "planted-demo-gpt2",
        "context_size": N_POSITIONS,
        "prepend_bos": True,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "model_from_pretrained_kwargs": {"center_writing_weights": False},
    }


# ------------------------------------------------------------ the transcoders

TRANSCODER_WIDTH = 8  # features per layer: the neurons, then dead ones (zero encoder, bias -1)


def build_transcoder(model: GPT2LMHeadModel, layer: int) -> tuple[dict, list[str]]:
    """SAELens transcoder weights equal to layer `layer`'s MLP, and each feature's name."""
    mlp = model.transformer.h[layer].mlp
    names = [n.name for n in NEURONS.get(layer, [])]
    n_inner = mlp.c_fc.weight.shape[1]
    names += [f"dead_{k}" for k in range(TRANSCODER_WIDTH - len(names))]
    w_enc = torch.zeros(D_MODEL, TRANSCODER_WIDTH)
    w_dec = torch.zeros(TRANSCODER_WIDTH, D_MODEL)
    b_enc = torch.full((TRANSCODER_WIDTH,), -1.0)
    w_enc[:, :n_inner] = mlp.c_fc.weight.detach()  # Conv1D: (d_model, n_inner)
    w_dec[:n_inner] = mlp.c_proj.weight.detach()
    b_enc[:n_inner] = mlp.c_fc.bias.detach()
    weights = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": mlp.c_proj.bias.detach().clone()}
    return weights, names


def transcoder_cfg(layer: int) -> dict:
    """cfg.json of SAELens' transcoder architecture: reads ln2.hook_normalized, writes hook_mlp_out."""
    return {
        "architecture": "transcoder",
        "d_in": D_MODEL,
        "d_sae": TRANSCODER_WIDTH,
        "d_out": D_MODEL,
        "dtype": "float32",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "hook_name_out": f"blocks.{layer}.hook_mlp_out",
        "hook_layer_out": layer,
        "metadata": {
            "hook_name": f"blocks.{layer}.ln2.hook_normalized",
            "model_name": "planted-demo-gpt2",
            "prepend_bos": True,
            "context_size": N_POSITIONS,
        },
    }


# ------------------------------------------------------------------ the truth


def trace_truth(transcoder_names: dict[int, list[str]]) -> dict:
    """circuit.json's trace.py part: node ids of the planted path in TRACE_PROMPT, and its edges."""
    words = ["<|endoftext|>", *TRACE_PROMPT.split()]
    last = len(words) - 1

    def node_id(end: tuple) -> str:
        if end[0] == "embed":
            return f"embed@{words.index(end[1])}"
        if end[0] == "logit":
            return f"logit_{TOKENS.index(end[1])}"
        return f"tc_{end[0]}.{transcoder_names[end[0]].index(end[1])}@{last}"

    features = {
        f"tc_{layer}.{index}": name
        for layer, names in transcoder_names.items()
        for index, name in enumerate(names)
    }
    edges = [{"source": node_id(u), "target": node_id(d), "sign": sign} for u, d, sign in TRACE_EDGES]
    return {"prompt": TRACE_PROMPT, "transcoder_features": features, "edges": edges}


def circuit_truth(names: dict[str, list[str]], transcoder_names: dict[int, list[str]]) -> dict:
    """circuit.json: every feature's role, the planted edges with signs, the prompt."""

    def node_id(key: tuple[str, int, str]) -> str:
        site, layer, name = key
        return f"{site}_{layer}.{names[f'{site}_{layer}'].index(name)}"

    features = {}
    for key, feature_names in names.items():
        site, layer = key.rsplit("_", 1)
        for index, name in enumerate(feature_names):
            planted = CIRCUIT.get((site, int(layer), name))
            role = "circuit" if planted else "dead" if name.startswith("dead_") else "distractor"
            features[f"{key}.{index}"] = {
                "name": name,
                "role": role,
                "effect_on_target": planted or 0,
                "at_last_position": bool(planted) and (site, int(layer), name) not in BEFORE_LAST_POSITION,
            }

    def edges(table: list) -> list[dict]:
        return [{"source": node_id(u), "target": node_id(d), "sign": sign} for u, d, sign in table]

    return {
        "description": (
            "Planted truth of the demo model (sparse_coding/demo/build.py). Roles: circuit "
            "(on the path to the target), distractor (fires on the demo text, no effect on the "
            "target), dead (never fires). effect_on_target: +1 raises log p(target) at the "
            "prompt's last position, -1 lowers it, 0 none; at_last_position: a circuit feature "
            "firing at that position (the others fire earlier). "
            "Edge sign: +1 when the source raises the target feature's activation, -1 when it "
            "lowers it. direct_edges join adjacent sites (fast.py); resid_edges join resid "
            "layers through everything between them, at the last position (pipe.py). trace: "
            "trace.py's planted path in its prompt (transcoder features tc_{layer}.{index}@{position}; "
            "edge sign: +1 when the source raises the target's pre-activation or logit)."
        ),
        "prompt": PROMPT,
        "target": TARGET,
        "features": features,
        "direct_edges": edges(DIRECT_EDGES),
        "resid_edges": edges(RESID_EDGES),
        "trace": trace_truth(transcoder_names),
    }


# ------------------------------------------------------------------ writing


def build(out_dir: Path) -> None:
    """Write model/, saes/, transcoders/, circuit.json and corpus.txt under `out_dir`."""
    rng = np.random.default_rng(SEED)
    geometry = Geometry(rng)
    model_dir = out_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    model = build_model(geometry)
    model.save_pretrained(model_dir)
    build_tokenizer().save_pretrained(model_dir)
    names = {}
    for site in HOOKS:
        for layer in range(N_LAYERS):
            weights, names[site_key(site, layer)] = build_sae(site, layer, geometry, rng)
            folder = out_dir / "saes" / site_key(site, layer)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "cfg.json").write_text(json.dumps(sae_cfg(site, layer), indent=2) + "\n")
            save_file(weights, str(folder / "sae_weights.safetensors"))
    transcoder_names = {}
    for layer in range(N_LAYERS):  # after the SAEs: draws nothing from rng, so their files stay as they were
        weights, transcoder_names[layer] = build_transcoder(model, layer)
        folder = out_dir / "transcoders" / f"mlp_{layer}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cfg.json").write_text(json.dumps(transcoder_cfg(layer), indent=2) + "\n")
        save_file(weights, str(folder / "sae_weights.safetensors"))
    truth = circuit_truth(names, transcoder_names)
    (out_dir / "circuit.json").write_text(json.dumps(truth, indent=2) + "\n")
    (out_dir / "corpus.txt").write_text("\n".join(CORPUS) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=Path(__file__).resolve().parent)
    build(parser.parse_args(argv).out_dir)


if __name__ == "__main__":
    main()
