"""Structured pruning of a trained run (Minitron, Muralidharan et al. 2024; Sheared LLaMA, Xia et al. 2023)."""
