"""GPT-2-small-shaped SAEs with random weights, for benchmarks (nothing to download).

Real SAEs fire sparsely and on different features at different tokens. Random
ones do neither: ReLU encoders fire on half their latents, and a random GPT-2's
activations share one large direction at every token, so an uncentred encoder
picks the same features everywhere (the TopK ones fired on ~40% of tokens).
`calibrate_saes` therefore does what training does: b_dec becomes the mean of
the SAE's (normalised) inputs over random text, which training initialises it
to (the geometric median in OpenAI's and SAELens' recipes), and each ReLU SAE's
encoder bias drops until about `active_per_token` features fire on the
benchmark's prompts.
"""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from sparse_coding.models.saes import SAE, SAEConfig
from sparse_coding.models.transformer import GPT2
from sparse_coding.splicing.splice import Site, SplicedModel


def random_gpt2(device: str) -> GPT2:
    """GPT-2 small's shape with transformers' random initialisation (GPT2Config() defaults)."""
    return GPT2.from_transformers(GPT2LMHeadModel(GPT2Config())).to(device)


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


def calibrate_saes(
    spliced: SplicedModel, ids: torch.Tensor, centre_on: torch.Tensor, active_per_token: int = 80
) -> None:
    """Centre every SAE on its inputs over the token ids `centre_on` (b_dec = their mean), then
    set ReLU encoder biases so that about `active_per_token` features fire on `ids` (the
    benchmark's prompts: a random GPT-2's activations drift with position, so a bias set on
    other lengths would fire more or less on them)."""

    def centre(site: Site, x: torch.Tensor) -> torch.Tensor:
        site.sae.b_dec.copy_(site.sae.normalize(site.to_sae_space(x))[0].flatten(0, -2).mean(0))
        return x

    def set_bias(site: Site, x: torch.Tensor) -> torch.Tensor:
        if site.sae.cfg.activation == "relu":
            pre = site.sae.pre_activations(site.sae.normalize(site.to_sae_space(x))[0])
            q = 1 - active_per_token / site.sae.d_sae
            site.sae.b_enc -= torch.quantile(pre.flatten().float()[:1_000_000], q)
        return x

    for intervention, tokens in ((centre, centre_on), (set_bias, ids)):
        with torch.no_grad(), spliced.intervene(intervention):
            spliced(tokens)


class IdNames:
    """Stands in for a tokenizer: names token ids (no download)."""

    def decode(self, ids: list[int]) -> str:
        return f"<{ids[0]}>"
