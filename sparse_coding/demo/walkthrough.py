# %% [markdown]
# # Walkthrough: find the planted circuit in the demo model
#
# The demo model (sparse_coding/demo/) is a 3-layer GPT-2 whose weights were
# written by hand: after "sun", an attention head copies "sun" forward, an MLP
# turns it into "heat" (and some "light"), and the next MLP turns heat into
# the unembedding direction of "hot" while light damps it. circuit.json holds
# that truth. Run the cells from the repository root (VS Code or Jupyter read
# the `# %%` markers), or the whole file: `python3 sparse_coding/demo/walkthrough.py`.

# %%
import json
from pathlib import Path

import torch

from sparse_coding import (
    METRICS,
    GraphOptions,
    gradient_graph,
    load_config,
    load_spliced_model,
    token_batch,
    tokenize_prompt,
    validate_circuit,
)
from sparse_coding.text.corpus import iter_batches

config = load_config("sparse_coding/config/demo_config.yaml")
spliced, tokenizer = load_spliced_model(config)  # the model + 9 SAEs (resid, attn, mlp x 3 layers)
truth = json.loads(Path("sparse_coding/demo/circuit.json").read_text())
tokens = tokenize_prompt(tokenizer, config.PROMPT, prepend_bos=True)
print(tokenizer.convert_ids_to_tokens(tokens[0]))

# %% [markdown]
# ## The gradient graph (what fast.py draws)
# Node attribution = the first-order change of the loss of "hot" if the
# feature were removed; positive = the feature supports "hot".

# %%
options = GraphOptions(METRICS["cross_entropy"], num_down_nodes=3, num_up_nodes=3)
graph = gradient_graph(spliced, [token_batch(tokens)], options)
for node in sorted(graph.nodes.values(), key=lambda n: -abs(n.attribution or 0)):
    name = truth["features"].get(node.id, {}).get("name", "(SAE error)")
    print(f"{node.id:12} {name:10} attribution {node.attribution:+.4f}")

# %% [markdown]
# ## Inspect one node: the mlp_1 feature that writes "hot"
# Its edges in and out, and the next tokens its decoder row promotes.

# %%
hot = next(n for n, f in truth["features"].items() if n.startswith("mlp_1.") and f["name"] == "says_hot")
for edge in graph.edges.values():
    if hot in (edge.source, edge.target):
        print(f"{edge.source} -> {edge.target}: {edge.effect:+.4f}")
site = spliced.by_key[hot.split(".")[0]]
logits = site.sae.W_dec[int(hot.split(".")[1])] @ spliced.model.lm_head.weight.T
print("promotes:", [tokenizer.decode([int(i)]) for i in logits.topk(3).indices])

# %% [markdown]
# ## Validate the circuit (what val.py reports)
# Faithfulness 1: the circuit alone, everything else mean-ablated, recovers
# the model's loss on the demo corpus; completeness 0: without it, nothing is left.

# %%
circuit: dict[str, list[int]] = {}
for node, feature in truth["features"].items():
    if feature["role"] == "circuit":
        key, index = node.split(".")
        circuit.setdefault(key, []).append(int(index))
texts = Path(config.DATASET).read_text().splitlines()
batches = list(iter_batches(texts, tokenizer, batch_size=8, max_len=32, prepend_bos=True))
with torch.no_grad():
    result = validate_circuit(spliced, batches, circuit=circuit)
print(f"faithfulness {result.faithfulness:.4f}, completeness {result.completeness:.4f}")
