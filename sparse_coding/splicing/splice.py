"""Splice SAEs into GPT-2 (`models.transformer.GPT2`): one mechanism for every algorithm.

A spliced site replaces its activation x by ``decode(encode(x)) + error`` with
``error = x - decode(encode(x))``, so the spliced model computes exactly what
the plain model computes. Algorithms differ only in the *intervention* they
pass to `SplicedModel.intervene`: a function ``(site, x) -> x'`` called at
every site in forward order (record codes, zero-ablate features, make features
and errors autograd leaves, cut a site off from its input...).

Sites and their places in the model (TransformerLens names):

    hook_resid_pre   input of block L
    hook_attn_out    output of block L's attention
    hook_resid_mid   resid_pre + attn_out (spliced through the attention output)
    hook_mlp_out     output of block L's MLP
    hook_resid_post  output of block L

SAEs trained on TransformerLens models with centred writing weights
(`gpt2-small-res-jb`) read ``x - mean(x)``; `Site.code` does that conversion.

Editing features (`edit_features`: set, scale, add; zero and patch
ablations are the same edit) changes x by the edited features' decoder rows
only. Transcoder sites (`transcoder_site`) answer what it asks of a site, so
a spliced model may hold SAE sites, transcoder sites, or both.
"""

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from sparse_coding.errors import SAELoadError
from sparse_coding.models.saes import SAE, decoder_sum, grouped_rows_sum
from sparse_coding.models.transformer import GPT2
from sparse_coding.nodes import hook_position, site_key

if TYPE_CHECKING:
    from sparse_coding.transcoders.transcoder import TranscoderSet

logger = logging.getLogger(__name__)


@dataclass
class SiteCode:
    """An activation x in SAE terms: ``x = (feats * scale) @ W_dec + const + error``."""

    feats: Tensor  # (..., d_sae) the SAE's own activations (as on Neuronpedia)
    scale: Tensor  # (..., 1) coefficient of decoder rows: layer-norm std, else 1
    error: Tensor | None  # (..., d_model) x - x_hat, in model space and dtype; None: not computed

    @property
    def values(self) -> Tensor:
        """Node values for attribution: activation times its decoder scale."""
        return self.feats * self.scale.to(self.feats.dtype)


@dataclass
class Site:
    """One place where an SAE reads and is spliced."""

    sae: SAE
    kind: str  # "resid" | "attn" | "mlp"
    layer: int
    reads = True  # the one site of its key (a cross-layer transcoder's key has several; not a field)

    @property
    def key(self) -> str:
        return site_key(self.kind, self.layer)

    @property
    def hook(self) -> str:
        return self.sae.hook_name.rsplit(".", 1)[1]

    @property
    def order(self) -> tuple[int, int]:
        return hook_position(self.sae.hook_name)

    @property
    def d_sae(self) -> int:
        return self.sae.d_sae

    @property
    def d_model(self) -> int:
        return self.sae.d_in

    @property
    def dtype(self) -> torch.dtype:
        return self.sae.W_dec.dtype

    def register(self, model: GPT2, intervention: "Intervention") -> list:
        """Forward hooks that replace the site's activation x by ``intervention(self, x)``."""
        block = model.transformer.h[self.layer]
        if self.hook == "hook_resid_pre":
            return [block.register_forward_pre_hook(_edit_block_input(self, intervention))]
        outputs = {"hook_attn_out": block.attn, "hook_mlp_out": block.mlp, "hook_resid_post": block}
        if self.hook in outputs:
            return [outputs[self.hook].register_forward_hook(lambda m, a, out: intervention(self, out))]
        # hook_resid_mid = resid_pre + attn_out: edit it through the attention output.
        captured: list[Tensor] = []
        capture = _edit_block_input(self, lambda s, x: captured.append(x) or x)

        def edit_mid(module, args, out):
            pre = captured.pop()
            mid = pre + out
            new_mid = intervention(self, mid)
            return out if new_mid is mid else new_mid - pre

        return [block.register_forward_pre_hook(capture), block.attn.register_forward_hook(edit_mid)]

    def to_sae_space(self, x: Tensor) -> Tensor:
        """Model activation -> the SAE's input convention, in at least float32 (`SAE.input_dtype`):
        only the encoder product runs at SAE_DTYPE."""
        x = x.to(torch.promote_types(x.dtype, self.sae.input_dtype))
        return x - x.mean(dim=-1, keepdim=True) if self.sae.cfg.center_writing_weights else x

    def feats(self, x: Tensor) -> Tensor:
        """The SAE's own activations (..., d_sae) of a model activation; encode only."""
        return self.sae.encode(self.to_sae_space(x))

    def feats_of(self, x: Tensor, features: Tensor) -> Tensor:
        """The SAE's own activations (..., n) of the chosen `features` only."""
        return self.sae.encode_features(self.to_sae_space(x), features)

    def feats_at(self, x: Tensor, rows: Tensor, positions: Tensor, features: Tensor) -> Tensor:
        """Activations (n,): feature features[e] at x[rows[e], positions[e]] (x: (batch, pos, d_model)).

        Each distinct token is encoded once, for the distinct features only.
        """
        tokens, token_index = (rows * x.shape[1] + positions).unique(return_inverse=True)
        chosen, feature_index = features.unique(return_inverse=True)
        return self.feats_of(x.flatten(0, -2)[tokens], chosen)[token_index, feature_index]

    def decoder_scale(self, x: Tensor) -> Tensor:
        """(..., 1): the coefficient of decoder rows in x's reconstruction (layer-norm std, else 1),
        in the SAE's dtype."""
        return self.sae.normalize(self.to_sae_space(x))[2]

    def pre_of(self, x: Tensor, features: Tensor | slice) -> Tensor:
        """Encoder pre-activations (..., n) of the chosen `features` only."""
        return self.sae.feature_pre_activations(self.to_sae_space(x), features)

    def code(self, x: Tensor) -> SiteCode:
        """Encode a model activation (..., d_model); differentiable in x."""
        x_n, mu, std = self.sae.normalize(self.to_sae_space(x))
        feats = self.sae.activate(self.sae.pre_activations(x_n))
        error = self._error(x, decoder_sum(feats, self.sae.W_dec), mu, std)
        return SiteCode(feats, std.to(x.dtype), error)

    def selected_feats(self, x: Tensor, features: Tensor, gate: Tensor) -> Tensor:
        """Activations (..., n) of chosen features as a differentiable function of x.

        `gate` (..., n) is where those features are on in a full encode; the
        value is pre-activation * gate, which equals ReLU, TopK and JumpReLU
        and has their gradients, without a full-width backward.
        """
        return self.pre_of(x, features) * gate

    def error_at(self, x: Tensor, tokens: Tensor, features: Tensor) -> Tensor:
        """The SAE error x - x_hat (..., d_model), differentiable in x, with the active entries
        held fixed: `features` on at `tokens` (flat indices over x's leading dims, sorted).

        Given x's own active entries, equal to `code(x).error` and, as every
        activation function's gate is piecewise constant, with its gradient
        (almost everywhere); but only those entries' encoder columns and
        decoder rows are read: no full-width product, forward or backward.
        """
        x_n, mu, std = self.sae.normalize(self.to_sae_space(x))
        pre = self.sae.entry_pre_activations(x_n, tokens, features)
        n_tokens = x_n[..., 0].numel()
        decoded = grouped_rows_sum(self.sae.W_dec, features, pre, tokens, n_tokens).view_as(x_n)
        return self._error(x, decoded, mu, std)

    def _error(self, x: Tensor, decoded: Tensor, mu: Tensor, std: Tensor) -> Tensor:
        """x - x_hat in model space, from the decoded feature sum (..., d_in) and x's LN stats."""
        x_hat = (decoded.to(mu.dtype) + self.sae.b_dec) * std + mu
        if self.sae.cfg.center_writing_weights:
            x_hat = x_hat + x.to(x_hat.dtype).mean(dim=-1, keepdim=True)
        return x - x_hat.to(x.dtype)

    def decode_rows(self, values: Tensor, features: Tensor) -> Tensor:
        """values[..., None] * W_dec[features]: the decoded contribution of single features."""
        return (values.to(self.sae.W_dec.dtype)[..., None] * self.sae.W_dec[features]).to(values.dtype)

    def decode(self, values: Tensor) -> Tensor:
        """values (..., d_sae) @ W_dec: the features' part of the reconstruction, without its biases."""
        return values.to(self.sae.W_dec.dtype) @ self.sae.W_dec


# Called at every site (an SAE `Site` or a `TranscoderSite`) with its activation x; returns x'.
Intervention = Callable[[Site, Tensor], Tensor]


class SplicedModel:
    """A GPT-2 with SAEs at some sites (and transcoders at some MLPs); run it under an intervention.

    ``sites`` holds every place an intervention is called, in forward order;
    ``by_key`` the site of each key (a transcoder layer's reading site).
    """

    def __init__(
        self,
        model: GPT2,
        saes: list[SAE],
        prepend_bos: bool = True,
        transcoders: "TranscoderSet | None" = None,
    ) -> None:
        self.model = model
        self.transcoders = transcoders
        self.prepend_bos = prepend_bos  # whether inputs start with BOS, as its SAEs were trained
        n_layers, d_model = model.config.n_layer, model.config.n_embd
        for sae in saes:
            if sae.d_in != d_model:
                raise SAELoadError(
                    f"SAE {sae.cfg.source} has d_in={sae.d_in}, but the model's d_model is {d_model}"
                )
            if not 0 <= sae.layer < n_layers:
                raise SAELoadError(
                    f"SAE {sae.cfg.source} reads {sae.hook_name}, outside the model's {n_layers} layers"
                )
        sae_sites = [Site(sae, sae.site, sae.layer) for sae in saes]
        if len({site.key for site in sae_sites}) != len(sae_sites):
            raise SAELoadError("Two SAEs splice the same site; give each (site, layer) one SAE")
        sites: list = sae_sites
        if transcoders is not None:
            from sparse_coding.splicing.transcoder_site import transcoder_sites

            sites = sites + transcoder_sites(transcoders, model)
        self.sites = sorted(sites, key=lambda s: s.order)
        self.by_key = {site.key: site for site in self.sites if site.reads}

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def n_layers(self) -> int:
        return self.model.config.n_layer

    @contextmanager
    def intervene(self, intervention: Intervention | None) -> Iterator[None]:
        """Call `intervention` at every site during forwards run inside the block (None: none)."""
        handles = []
        try:
            for site in self.sites if intervention is not None else []:
                handles += site.register(self.model, intervention)
            yield
        finally:
            for handle in handles:
                handle.remove()

    def embed(self, input_ids: Tensor) -> Tensor:
        """Token + position embeddings (batch, pos, d_model)."""
        return self.model.embed(input_ids)

    def run_blocks(
        self, hidden: Tensor, start: int, stop: int, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Blocks [start, stop) on a residual stream (batch, pos, d_model), under the active
        intervention; right padding only."""
        return self.model.run_blocks(hidden, start, stop, attention_mask)

    def unembed(self, resid_final: Tensor) -> Tensor:
        """Logits of the final residual stream."""
        return self.model.unembed(resid_final)

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits (batch, pos, d_vocab) of the whole model, under the active intervention."""
        return self.model(input_ids, attention_mask)


def _edit_block_input(site: Site, intervention: Intervention) -> Callable:
    """A forward pre-hook on a block replacing its input (resid_pre) by intervention(site, x)."""

    def hook(module, args):
        return (intervention(site, args[0]), *args[1:])

    return hook


def record_codes(codes: dict[str, SiteCode]) -> Intervention:
    """Intervention that stores every site's code and leaves activations unchanged."""

    def record(site: Site, x: Tensor) -> Tensor:
        codes[site.key] = site.code(x)
        return x

    return record


class FeatureEdits(NamedTuple):
    """Edits of single activations at one site: entry e sets feature features[e] at
    (rows[e], positions[e]) to ``factor[e] * activation + offset[e]``.

    set v: factor 0, offset v; scale c: factor c, offset 0; add v: factor 1,
    offset v (added whether the feature fires or not). Offsets are in the
    SAE's activation units (`edit_features` multiplies them by the decoder
    scale), or node values (activation * scale) with ``node_values=True``.
    """

    rows: Tensor  # (n,) long: batch rows
    positions: Tensor  # (n,) long: columns of the site's activation
    features: Tensor  # (n,) long
    factor: Tensor  # (n,) float
    offset: Tensor  # (n,) float


def edit_features(site: Site, x: Tensor, edits: FeatureEdits, *, node_values: bool = False) -> Tensor:
    """x (batch, pos, d_model) with `edits` applied through the decoder, error term kept.

    ``x' = x + sum_e (new_e - a_e) * scale * W_dec[f_e]``, the activations a_e
    re-read from x (only where the factor is not 1: an `add` reads nothing).
    """
    if len(edits.rows) == 0:
        return x
    scale = site.decoder_scale(x)[edits.rows, edits.positions, 0]  # (n,)
    change = edits.offset.to(scale.dtype) * (1 if node_values else scale)
    reads = edits.factor != 1
    if bool(reads.any()):
        acts = site.feats_at(x, edits.rows[reads], edits.positions[reads], edits.features[reads])
        read_change = (edits.factor[reads].to(acts.dtype) - 1) * acts * scale[reads]
        change = change.index_add(0, reads.nonzero()[:, 0], read_change.to(change.dtype))
    rows = site.decode_rows(change, edits.features).to(x.dtype)  # (n, d_model)
    return x + torch.zeros_like(x).index_put_((edits.rows, edits.positions), rows, accumulate=True)


def feature_edits(edits: dict[str, FeatureEdits], *, node_values: bool = False) -> Intervention:
    """Intervention applying each site's `FeatureEdits` (see `edit_features`); other sites run plain."""

    def edit(site: Site, x: Tensor) -> Tensor:
        chosen = edits.get(site.key)
        return x if chosen is None else edit_features(site, x, chosen, node_values=node_values)

    return edit


def zero_ablation(
    targets: dict[str, Tensor],
    codes: dict[str, SiteCode] | None = None,
    values: dict[str, Tensor] | None = None,
) -> Intervention:
    """Intervention that zeroes chosen features (or sets them to given values), keeping the error term.

    Args:
        targets: site key -> (n, 3) long tensor of (batch row, position, feature)
            to zero. Rows may differ, so many ablations run as one batch.
        codes: if given, filled with every site's code of its current input.
        values: site key -> (n,) node values (activation * scale) to set the
            targets to instead of 0 (activation patching).

    The new activation is ``x - sum of ablated f * scale * W_dec[f]``: features
    are re-read from the current (possibly already changed) input and the error
    term is that input's own, as in Marks et al. It is `edit_features`' set.
    """
    edits = {}
    for key, chosen in targets.items():
        rows, positions, features = chosen.unbind(-1)
        zeros = torch.zeros(len(chosen), device=chosen.device)
        offset = values[key] if values is not None and key in values else zeros
        edits[key] = FeatureEdits(rows, positions, features, zeros, offset)
    apply = feature_edits(edits, node_values=True)

    def ablate(site: Site, x: Tensor) -> Tensor:
        if codes is not None:
            codes[site.key] = site.code(x)
        return apply(site, x)

    return ablate
