"""What a node shows: top-activating contexts, logit cells, Neuronpedia explanations."""
