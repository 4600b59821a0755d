"""The one graph type, its files (.dot/.json, merged across runs), drawing, and publishing."""
