"""Hugging Face checkpoint import and export (safetensors + config.json; no torch needed)."""
