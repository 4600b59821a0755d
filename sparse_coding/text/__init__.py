"""Text to tokens to batches: the tokenizer, text sources, contrastive pairs, and how a token is shown."""
