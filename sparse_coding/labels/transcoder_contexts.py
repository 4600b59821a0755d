"""Top-activating contexts of transcoder features: the statistic of `labels.contexts`, in one pass.

Each batch runs the model up to the last asked layer; each asked layer's
transcoder input is read before its ``ln_2`` and only the asked features are
encoded (ReLU and JumpReLU: their encoder columns; TopK: the full encode its
membership needs). The graph's own few features on DATASET (else PROMPT) are
collected per run, not cached on disk.
"""

import logging
import time
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from sparse_coding.labels.context_cache import ContextCache
from sparse_coding.labels.contexts import SiteTopK, _keep_referenced, to_cache
from sparse_coding.models.transformer import GPT2
from sparse_coding.nodes import site_key
from sparse_coding.runtime.distributed import move
from sparse_coding.runtime.progress import progress
from sparse_coding.text.batches import TokenBatch
from sparse_coding.text.tokenizer import Tokenizer
from sparse_coding.transcoders.replacement import layer_scale, transcoder_input
from sparse_coding.transcoders.transcoder import TranscoderSet

logger = logging.getLogger(__name__)


def asked_activations(transcoders: TranscoderSet, layer: int, x: Tensor, features: Tensor) -> Tensor:
    """Activations (..., n) of `features` at inputs x (..., d_in): equal to encode(x)[..., features]."""
    weights = transcoders.layers[layer]
    if weights.cfg.activation == "topk":
        return transcoders.encode(layer, x)[..., features]
    pre = transcoders.pre_activations(layer, x, features)
    if weights.cfg.activation == "jumprelu":
        return torch.relu(pre) * (pre > weights.threshold[features])
    return torch.relu(pre)


def collect_transcoder_contexts(
    model: GPT2, transcoders: TranscoderSet, tokenizer: Tokenizer, batches: Iterable[TokenBatch], *,
    features: Mapping[int, list[int]], per_feature: int, view: int,
) -> ContextCache:  # fmt: skip
    """Top `per_feature` contexts of the asked features (layer -> indices), keyed ``{kind}_{layer}``."""
    start = time.perf_counter()
    device = transcoders.device
    tops = {
        layer: SiteTopK.empty(per_feature, torch.tensor(sorted(set(dims)), device=device), view)
        for layer, dims in features.items()
        if dims
    }
    sequences: dict[int, Tensor] = {}
    if tops:
        for batch in progress(batches, desc="Collecting transcoder contexts", unit="batch"):
            batch = move(batch, device)
            _stream_batch(model, transcoders, batch, tops)
            _keep_referenced(sequences, batch, tops.values())
    logger.info("Collected contexts of %d transcoder features in %.1fs",
                sum(len(top.features) for top in tops.values()), time.perf_counter() - start)  # fmt: skip
    keyed = {site_key(transcoders.kind, layer): top for layer, top in tops.items()}
    sources = dict.fromkeys(keyed, transcoders.source)
    return to_cache(keyed, sources, sequences, tokenizer, view, per_feature)


def _stream_batch(
    model: GPT2, transcoders: TranscoderSet, batch: TokenBatch, tops: dict[int, SiteTopK]
) -> None:
    """One forward up to the last asked layer; each asked layer's top-k takes this batch."""
    h_mid: dict[int, Tensor] = {}
    blocks = model.transformer.h
    handles = [
        blocks[layer].ln_2.register_forward_pre_hook(
            lambda m, args, layer=layer: h_mid.__setitem__(layer, args[0])
        )
        for layer in tops
    ]
    try:
        with torch.inference_mode():
            model.run_blocks(model.embed(batch.input_ids), 0, max(tops) + 1, batch.attention_mask)
            for layer, top in tops.items():
                h = h_mid[layer]
                x = transcoder_input(h, layer_scale(h, blocks[layer].ln_2.eps), transcoders.input_hook(layer))
                acts = asked_activations(transcoders, layer, x, top.features)
                top.update(acts, batch.attention_mask, batch.first_index)
    finally:
        for handle in handles:
            handle.remove()
