"""Transcoders and cross-layer transcoders: published layouts, the replacement model, interventions."""
