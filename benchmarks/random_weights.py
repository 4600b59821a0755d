"""GPT-2-small-shaped SAEs with random weights, for benchmarks (nothing to download).

Real SAEs fire sparsely; random ReLU encoders fire on half their latents, so
`calibrate_relu_biases` lowers each ReLU SAE's encoder bias until about
`active_per_token` features fire, as in trained SAEs.
"""

import torch

from sparse_coding.models.saes import SAE, SAEConfig
from sparse_coding.splicing.splice import Site, SplicedModel


def random_sae(hook: str, d_sae: int, topk: bool, device: str, gen: torch.Generator) -> SAE:
    """A ReLU SAE with centred inputs (jb style) or a TopK-32 layer-norm SAE (OpenAI v5 style)."""
    d_in = 768
    cfg = SAEConfig(
        d_in=d_in, d_sae=d_sae, hook_name=hook, activation="topk" if topk else "relu", k=32 if topk else None,
        normalize_activations="layer_norm" if topk else "none", apply_b_dec_to_input=True, prepend_bos=True,
        center_writing_weights=not topk, neuronpedia_id=None, source=f"random {hook}",
    )  # fmt: skip
    weights = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) / d_in**0.5,
        "b_enc": torch.zeros(d_sae),
        "W_dec": torch.randn(d_sae, d_in, generator=gen) / d_in**0.5,
        "b_dec": torch.zeros(d_in),
    }
    return SAE(cfg, weights).to(device)


def calibrate_relu_biases(spliced: SplicedModel, ids: torch.Tensor, active_per_token: int = 80) -> None:
    """Set ReLU encoder biases so that about `active_per_token` features fire on `ids`."""

    def calibrate(site: Site, x: torch.Tensor) -> torch.Tensor:
        if site.sae.cfg.activation == "relu":
            pre = site.sae.pre_activations(site.to_sae_space(x))
            q = 1 - active_per_token / site.sae.d_sae
            site.sae.b_enc -= torch.quantile(pre.flatten().float()[:1_000_000], q)
        return x

    with torch.no_grad(), spliced.intervene(calibrate):
        spliced(ids)


class IdNames:
    """Stands in for a tokenizer: names token ids (no download)."""

    def decode(self, ids: list[int]) -> str:
        return f"<{ids[0]}>"
