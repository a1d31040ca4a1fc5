"""Export a run for deployment: StableHLO prefill/decode functions (stablehlo.py) and a standalone runner (runner.py)."""
