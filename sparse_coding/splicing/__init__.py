"""Running the model with SAEs spliced in: one intervention mechanism, and suffix-only reruns."""
