"""Hugging Face hub files: the cache first, and one clear error at once when the hub cannot be asked.

`huggingface_hub` retries an unreachable hub for tens of seconds per file
before it fails; a notebook calling `load_sae` or `load_model` without
network would wait that long for each. Here a file that is not cached is
downloaded only after the hub answered one short probe (remembered for
`PROBE_MEMORY_S`); offline (`HF_HUB_OFFLINE`) or unreachable, the error names
the file, the cache and what to do.
"""

import time
from pathlib import Path

from sparse_coding.errors import SparseCodingError

HUB_PROBE_TIMEOUT_S = 3.0
PROBE_MEMORY_S = 60.0
_probes: dict[str, tuple[float, str | None]] = {}


def why_hub_cannot_be_asked() -> str | None:
    """ "HF_HUB_OFFLINE is set" or "the hub ... cannot be reached (...)"; None when it answers within
    HUB_PROBE_TIMEOUT_S (a probe's answer is remembered for PROBE_MEMORY_S)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint, now = constants.ENDPOINT, time.monotonic()
    if endpoint not in _probes or now - _probes[endpoint][0] >= PROBE_MEMORY_S:
        import requests

        try:
            requests.head(endpoint, timeout=HUB_PROBE_TIMEOUT_S, allow_redirects=False)
            problem = None
        except requests.RequestException as e:
            problem = f"the hub {endpoint} cannot be reached ({type(e).__name__})"
        _probes[endpoint] = (now, problem)
    return _probes[endpoint][1]


def hub_file(
    repo_id: str,
    filename: str,
    *,
    what: str,
    required: bool = True,
    error: type[SparseCodingError] = SparseCodingError,
) -> Path | None:
    """`filename` of hub repo `repo_id`: from the cache, else downloaded; None where the repo has
    no such file.

    Args:
        what: the file's role for messages, e.g. "SAE gpt2-small-res-jb layer 3".
        required: when the cache lacks the file and the hub cannot be asked, raise (True) or
            return None (False: an optional file, read when present).
        error: the exception raised for a required file (a SparseCodingError).

    Raises:
        error: a required file is not cached, and the hub cannot be asked.
        OSError: the hub answered with an error (a private or missing repo, a server error).
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    cached = try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str):
        return Path(cached)
    if cached is not None:  # the cache recorded that the repo lacks it
        return None
    why = why_hub_cannot_be_asked()
    if why is not None:
        if not required:
            return None
        raise error(
            f"{why}, and the Hugging Face cache {constants.HF_HUB_CACHE} lacks {filename} of {repo_id} "
            f"({what}). Download it where there is network (e.g. `hf download {repo_id}`) into that "
            f"cache (HF_HUB_CACHE), or point the config at a local folder"
        )
    try:
        return Path(hf_hub_download(repo_id, filename))
    except EntryNotFoundError:
        return None
    except HfHubHTTPError as e:
        raise OSError(str(e)) from e
