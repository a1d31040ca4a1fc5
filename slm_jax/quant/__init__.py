"""Post-training weight-only quantization of ``Linear`` kernels (int8 per channel, int4 group-wise)."""
