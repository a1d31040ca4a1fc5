"""One converter module per group of Hugging Face architectures."""
