"""Export a run for deployment: prefill/decode as StableHLO (stablehlo.py) or ONNX (onnx_export.py), an encoder
or classifier as one graph (encoder.py), and a standalone runner (runner.py)."""
