"""Files on disk: atomic writes and locks under DATA_DIR, the one cache type, and Hugging Face hub files."""
