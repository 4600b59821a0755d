"""The SAELens + TransformerLens side of tests/test_saelens_parity.py, run in the oracle's own venv.

    .ci/oracle-venv/bin/python tests/saelens_oracle.py SPEC.json

Imports nothing from sparse_coding: it answers, from the reference libraries
alone, what the project's numbers must equal. SPEC.json names the jobs; the
hub cache comes from the environment (HF_HUB_CACHE, HF_HUB_OFFLINE=1).

- "hub": SAE.from_pretrained(release, sae_id) for each [release, sae_id], run on
  the activations of HookedTransformer.from_pretrained(model) ("processed") and
  of from_pretrained_no_processing(model, **cfg.metadata.model_from_pretrained_kwargs)
  ("as_trained") for each token sequence: the hook's input, feature
  activations, reconstruction and error; W_dec @ W_U of the processed model;
  and the cfg facts (hook, prepend_bos, Neuronpedia id, model kwargs).
- "registry": SAELens' pretrained_saes.yaml entries of the named releases.
- "local": SAE.load_from_disk(folder) encode/decode of given inputs.

Writes OUT.safetensors (tensors by "job|...|name") and OUT.json (facts, versions).
"""

import json
import sys
from importlib.metadata import version

import torch
from safetensors.torch import load_file, save_file


def hub_jobs(spec: dict, tensors: dict, facts: dict) -> None:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    processed = HookedTransformer.from_pretrained(spec["model"], device="cpu")
    as_trained: dict[str, HookedTransformer] = {}
    for release, sae_id in spec["hub"]:
        sae = SAE.from_pretrained(release, sae_id, device="cpu")
        kwargs = sae.cfg.metadata.model_from_pretrained_kwargs or {}
        key = json.dumps(kwargs, sort_keys=True)
        if key not in as_trained:
            load = HookedTransformer.from_pretrained_no_processing
            as_trained[key] = load(spec["model"], device="cpu", **kwargs)
        job = f"{release}|{sae_id}"
        facts[job] = {
            "hook_name": sae.cfg.metadata.hook_name,
            "prepend_bos": sae.cfg.metadata.prepend_bos,
            "neuronpedia_id": sae.cfg.metadata.neuronpedia_id,
            "model_from_pretrained_kwargs": kwargs,
            "architecture": sae.cfg.architecture(),
        }
        tensors[f"{job}|logits"] = (sae.W_dec @ processed.W_U).contiguous()
        for name, model in (("processed", processed), ("as_trained", as_trained[key])):
            for index, ids in enumerate(spec["sequences"]):
                hook = sae.cfg.metadata.hook_name
                with torch.no_grad():
                    _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=hook)
                    x = cache[hook]
                    feats = sae.encode(x)
                    recon = sae.decode(feats)
                prefix = f"{job}|{name}|{index}"
                tensors |= {f"{prefix}|x": x, f"{prefix}|feats": feats, f"{prefix}|recon": recon}
                tensors[f"{prefix}|error"] = x - recon


def registry(spec: dict, facts: dict) -> None:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    facts["registry"] = {
        release: {
            "repo_id": directory[release].repo_id,
            "paths": directory[release].saes_map,
            "neuronpedia": directory[release].neuronpedia_id,
            "config_overrides": directory[release].config_overrides,
        }
        for release in spec["registry"]
    }


def local_jobs(spec: dict, tensors: dict) -> None:
    from sae_lens import SAE

    inputs = load_file(spec["inputs"])
    for name, folder in spec["local"].items():
        sae = SAE.load_from_disk(folder, device="cpu")
        with torch.no_grad():
            feats = sae.encode(inputs[name])
            tensors[f"{name}|feats"] = feats
            tensors[f"{name}|recon"] = sae.decode(feats)


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    tensors: dict[str, torch.Tensor] = {}
    facts: dict = {"versions": {name: version(name) for name in ("sae-lens", "transformer-lens", "torch")}}
    hub_jobs(spec, tensors, facts)
    registry(spec, facts)
    local_jobs(spec, tensors)
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, spec["out"] + ".safetensors")
    with open(spec["out"] + ".json", "w") as file:
        json.dump(facts, file)


if __name__ == "__main__":
    main()
