"""Graphs that leave the tool: Neuronpedia's attribution-graph file and upload, tables, W&B runs."""
