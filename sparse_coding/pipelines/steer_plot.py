"""The response curve drawn with matplotlib: PNG and SVG bytes from response_curve.json's data.

Drawn on a `Figure` of its own (no pyplot), so a notebook's backend and
figures are left alone.
"""

import io
import textwrap

from matplotlib import rc_context
from matplotlib.figure import Figure

from sparse_coding.config.steering import positions_text
from sparse_coding.pipelines.steer_report import prompt_means

AXIS_LABELS = {
    "set": "{node} set to x (its activation)",
    "scale": "{node} scaled by x (x = 1: unchanged)",
    "add": "{node}: x * W_dec added (x in activation units)",
}
# savefig's options per format. The SVG has no creation date and its element ids are hashed with a fixed
# salt (matplotlib draws a random one by default), so the same curve writes the same bytes.
IMAGE_OPTIONS = {"png": {"dpi": 150}, "svg": {"metadata": {"Date": None}}}
SVG_ID_SALT = {"svg.hashsalt": "sparse_coding"}


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
