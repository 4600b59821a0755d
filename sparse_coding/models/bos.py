"""One BOS convention per run: PREPEND_BOS settled against the SAEs' own cfg.json `prepend_bos`.

SAEs see different activations at every position when BOS is or is not
prepended (attention sinks on it), so a forward matches an SAE's dashboards
only when it is tokenized as that SAE was trained. One forward cannot serve
SAEs trained both ways. Torch-free: preflight settles it before anything loads.
"""

import logging
from collections.abc import Mapping, Sequence

from sparse_coding.errors import ConfigError

logger = logging.getLogger(__name__)


def settle_prepend_bos(explicit: bool | None, trained: Mapping[str, bool]) -> tuple[bool, list[str]]:
    """(PREPEND_BOS for a run, the SAEs trained the other way).

    Args:
        explicit: the PREPEND_BOS key; None (unset) takes the SAEs' shared convention (True when
            there are none), a value is kept and the SAEs it contradicts are returned so that the
            caller can warn once (`warn_bos_mismatch`).
        trained: SAE description -> its cfg's prepend_bos.

    Raises:
        ConfigError: PREPEND_BOS is unset and the SAEs disagree, naming them and the fixes.
    """
    if explicit is not None:
        return explicit, [source for source, value in trained.items() if value != explicit]
    with_bos = [source for source, value in trained.items() if value]
    without = [source for source, value in trained.items() if not value]
    if with_bos and without:
        raise ConfigError(
            f"PREPEND_BOS is unset and the SAEs were trained both ways: {len(with_bos)} with BOS "
            f"(e.g. {with_bos[0]}) and {len(without)} without (e.g. {without[0]}); one forward cannot "
            f"match both. Choose SAEs of one family (e.g. the OpenAI v5 sets at every site: "
            f"gpt2-small-resid-post-v5-32k, gpt2-small-attn-out-v5-32k, gpt2-small-mlp-out-v5-32k), "
            f"or set PREPEND_BOS: true or false to accept that the others differ from their dashboards"
        )
    return not without, []


def warn_bos_mismatch(explicit: bool, mismatched: Sequence[str]) -> None:
    """One warning naming the SAEs that an explicit PREPEND_BOS contradicts."""
    if mismatched:
        logger.warning(
            "PREPEND_BOS is %s, but %d SAE(s) were trained %s BOS (e.g. %s); their activations differ "
            "from their dashboards",
            str(explicit).lower(),
            len(mismatched),
            "without" if explicit else "with",
            mismatched[0],
        )
