"""steer.py's reports: steering.json and response_curve.json, the text researchers read, and the
response curve's PNG and SVG (drawn on a matplotlib `Figure` of its own, no pyplot, so a notebook's
backend and figures are left alone).

``steering.json``: ``source``, ``interventions`` (node, kind, value,
positions, in words), ``watched``, ``generation`` (decoding settings),
``sequences`` (per prompt and return sequence: ``prompt``, ``clean`` and
``steered`` text and token ids, ``steps``: per generated step the clean
token with its probability clean and steered (``p_clean``, ``p_steered``),
``kl`` and the tokens that ``rose`` and ``fell`` most as rows of ``token``,
``id``, ``clean``, ``steered``, ``change``; ``activations``: per node, clean
and steered, at the prompt's last token and the mean over the continuation),
``sign_convention``, ``run`` (script, time, world_size: 1), ``config``.

``response_curve.json``: ``node``, ``kind``, ``positions``, ``values``,
``prompts``, ``watched`` (node -> per prompt, per value), ``answer``,
``answer_logprob``, ``top_tokens`` (per prompt and value), ``sign_convention``, ``run``, ``config``.
"""

import io
import json
import textwrap
from dataclasses import asdict
from typing import Any

from matplotlib import rc_context
from matplotlib.figure import Figure
from torch import Tensor

from sparse_coding.algorithms.generation import Sampling
from sparse_coding.algorithms.response_curve import CurveResult
from sparse_coding.algorithms.steering import SteerResult, TokenChanges
from sparse_coding.config.steering import positions_text, positions_value
from sparse_coding.graphs.conventions import sentences
from sparse_coding.pipelines.steer_plan import SteerPlan
from sparse_coding.text.tokenizer import Tokenizer
from sparse_coding.text.tokens import token_text

SHOWN_PER_STEP = 3  # rose/fell tokens per step in the printed report (all LOGIT_TOKENS in the JSON)
AXIS_LABELS = {
    "set": "{node} set to x (its activation)",
    "scale": "{node} scaled by x (x = 1: unchanged)",
    "add": "{node}: x * W_dec added (x in activation units)",
}
# savefig's options per format. The SVG has no creation date and its element ids are hashed with a fixed
# salt (matplotlib draws a random one by default), so the same curve writes the same bytes.
IMAGE_OPTIONS = {"png": {"dpi": 150}, "svg": {"metadata": {"Date": None}}}
SVG_ID_SALT = {"svg.hashsalt": "sparse_coding"}


def to_json(data: dict[str, Any]) -> str:
    """Strict JSON (no NaN), indented."""
    return json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False)


def steering_data(result: SteerResult, plan: SteerPlan, tokenizer: Tokenizer, sampling: Sampling) -> dict:
    """steering.json's fields but ``config``."""
    n_samples = len(result.clean_tokens) // len(plan.texts)
    sequences = [
        _sequence(result, row, plan.texts[row // n_samples], row % n_samples, tokenizer, plan)
        for row in range(len(result.clean_tokens))
    ]
    return {
        "source": plan.source,
        "interventions": [asdict(edit) | {"description": edit.describe()} for edit in plan.edits],
        "watched": list(plan.watch),
        "generation": asdict(sampling)
        | {"decoding": "greedy" if sampling.greedy else "sampled", "return_sequences": n_samples},
        "sequences": sequences,
        "sign_convention": sentences("steer.py"),
    }


def _sequence(
    result: SteerResult, row: int, prompt: str, sample: int, tokenizer: Tokenizer, plan: SteerPlan
) -> dict:
    clean, steered = result.clean_tokens[row].tolist(), result.steered_tokens[row].tolist()
    steps = [
        {
            "step": step,
            "token": token_text(tokenizer, token),
            "p_clean": float(result.chosen.clean[row, step, 0]),
            "p_steered": float(result.chosen.steered[row, step, 0]),
            "kl": float(result.kl[row, step]),
            "rose": _token_rows(result.rose, row, step, tokenizer, sign=1),
            "fell": _token_rows(result.fell, row, step, tokenizer, sign=-1),
        }
        for step, token in enumerate(clean)
    ]
    last = result.prompts.width - 1
    intervened = {edit.node for edit in plan.edits}
    activations = {
        node: {
            "intervened": node in intervened,
            "clean_last_prompt": float(before[row, last]),
            "steered_last_prompt": float(after[row, last]),
            "clean_mean_generated": float(before[row, last + 1 :].mean()),
            "steered_mean_generated": float(after[row, last + 1 :].mean()),
        }
        for node, (before, after) in result.activations.items()
    }
    return {
        "prompt": prompt,
        "sample": sample,
        "clean": tokenizer.decode(clean),
        "steered": tokenizer.decode(steered),
        "clean_tokens": clean,
        "steered_tokens": steered,
        "steps": steps,
        "activations": activations,
    }


def _token_rows(changes: TokenChanges, row: int, step: int, tokenizer: Tokenizer, sign: int) -> list[dict]:
    """The tokens of one step whose change has `sign` (a step may have fewer than k)."""
    ids, clean, steered = (t[row, step].tolist() for t in changes)
    return [
        {"token": token_text(tokenizer, i), "id": i, "clean": c, "steered": s, "change": s - c}
        for i, c, s in zip(ids, clean, steered, strict=True)
        if (s - c) * sign > 0
    ]


def format_steering_report(data: dict) -> str:
    """The terminal report: interventions, texts side by side, per-step changes, activations."""
    generation = data["generation"]
    lines = [
        f"steer.py: {len(data['interventions'])} intervention(s) from {data['source']}, "
        f"{generation['decoding']} decoding, {generation['max_new_tokens']} new tokens",
        *(f"  {edit['description']}" for edit in data["interventions"]),
    ]
    for sequence in data["sequences"]:
        lines += ["", *_sequence_lines(sequence, generation["return_sequences"])]
    lines += ["", f"Changes: {data['sign_convention']['change']}; KL: {data['sign_convention']['kl']}"]
    return "\n".join(lines)


def _sequence_lines(sequence: dict, n_samples: int) -> list[str]:
    sample = f" (sample {sequence['sample'] + 1}/{n_samples})" if n_samples > 1 else ""
    lines = [
        f"Prompt {sequence['prompt']!r}{sample}",
        f"  clean:   {sequence['clean']!r}",
        f"  steered: {sequence['steered']!r}",
        f"  {'step':>4}  {'clean token':<16} {'p clean':>8} {'p steered':>9} {'KL':>8}  "
        f"rose (p steered - p clean) | fell",
    ]
    for step in sequence["steps"]:
        rose, fell = (_changes_text(step[name][:SHOWN_PER_STEP]) for name in ("rose", "fell"))
        probs = f"{step['p_clean']:>8.4f} {step['p_steered']:>9.4f} {step['kl']:>8.4f}"
        lines.append(f"  {step['step'] + 1:>4}  {step['token']!r:<16} {probs}  {rose} | {fell}")
    lines.append("  activations, clean -> steered: at the prompt's last token; mean over the continuation")
    for node, acts in sequence["activations"].items():
        mark = "*" if acts["intervened"] else " "
        lines.append(
            f"  {mark} {node:<16} {acts['clean_last_prompt']:9.4f} -> {acts['steered_last_prompt']:<9.4f}"
            f"  {acts['clean_mean_generated']:9.4f} -> {acts['steered_mean_generated']:.4f}"
        )
    return lines


def _changes_text(rows: list[dict]) -> str:
    return ", ".join(f"{row['token']!r} {row['change']:+.3f}" for row in rows) or "-"


def curve_data(result: CurveResult, plan: SteerPlan, tokenizer: Tokenizer) -> dict:
    """response_curve.json's fields but ``config``."""
    spec = plan.curve

    def table(values: Tensor | None) -> list[list[float]] | None:
        return None if values is None else values.tolist()

    top = [
        [
            [{"token": token_text(tokenizer, i), "id": i, "prob": p} for i, p in zip(ids, probs, strict=True)]
            for ids, probs in zip(prompt_ids, prompt_probs, strict=True)
        ]
        for prompt_ids, prompt_probs in zip(result.top_ids.tolist(), result.top_probs.tolist(), strict=True)
    ]
    return {
        "node": spec.node,
        "kind": spec.kind,
        "positions": positions_value(spec.positions),
        "values": result.values,
        "prompts": plan.texts,
        "watched": {node: table(values) for node, values in result.watched.items()},
        "answer": spec.answer,
        "answer_logprob": table(result.answer_logprob),
        "top_tokens": top,
        "sign_convention": sentences("steer.py"),
    }


def format_curve_report(data: dict) -> str:
    """The curve as a table: one row per value, mean over prompts."""
    watched = list(data["watched"])
    answer = [f"log p({data['answer']!r})"] if data["answer"] is not None else []
    header = ["value", *watched, *answer]
    columns = [data["values"], *(prompt_means(data["watched"][node]) for node in watched)]
    if answer:
        columns.append(prompt_means(data["answer_logprob"]))
    lines = [
        f"Response curve: {data['node']} ({data['kind']}) over {len(data['prompts'])} prompt(s), "
        f"read at each prompt's last token",
        "  ".join(f"{name:>14}" for name in header),
    ]
    lines += ["  ".join(f"{cell:>14.4f}" for cell in cells) for cells in zip(*columns, strict=True)]
    return "\n".join(lines)


def prompt_means(per_prompt: list[list[float]]) -> list[float]:
    """Per swept value, the mean over prompts."""
    return [sum(column) / len(column) for column in zip(*per_prompt, strict=True)]


def curve_figure(data: dict) -> Figure:
    """The figure of one response curve (`steer_report.curve_data`)."""
    panels = [name for name in ("watched", "answer_logprob") if data[name]]
    figure = Figure(figsize=(7.5, 2.2 + 2.6 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    x = data["values"]
    mean_of = f" (mean over {len(data['prompts'])} prompts)" if len(data["prompts"]) > 1 else ""
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "watched":
            for node, values in data["watched"].items():
                ax.plot(x, prompt_means(values), marker="o", markersize=3, label=node)
            ax.set_ylabel(f"activation at the\nprompt's last token{mean_of}")
            ax.legend(title="watched feature", fontsize="small")
        else:
            ax.plot(x, prompt_means(data["answer_logprob"]), marker="o", markersize=3, color="black")
            ax.set_ylabel(f"log p({data['answer']!r})\nafter the prompt{mean_of}")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(AXIS_LABELS[data["kind"]].format(node=data["node"]))
    where = positions_text(data["positions"])  # a word or a list of indices, as in the JSON
    figure.suptitle(f"Response curve of {data['node']} ({data['kind']} at {where})")
    figure.get_layout_engine().set(h_pad=0.15)
    caption = data["sign_convention"]["curve"]
    figure.supxlabel("\n".join(textwrap.wrap(caption, 110)), fontsize="small", color="dimgray")
    return figure


def curve_images(data: dict) -> dict[str, bytes]:
    """{"png": ..., "svg": ...} of the curve."""
    figure = curve_figure(data)
    images = {}
    for fmt, options in IMAGE_OPTIONS.items():
        buffer = io.BytesIO()
        with rc_context(SVG_ID_SALT):
            figure.savefig(buffer, format=fmt, **options)
        images[fmt] = buffer.getvalue()
    return images
