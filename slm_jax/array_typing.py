"""One shape vocabulary for docstrings, comments and einsum strings.

Dimension letters used across slm_jax:

  b  batch            t  time (query length)     s  source time (key length)
  d  model width      h  query heads             k  key/value heads
  g  query heads per key/value head (h = k * g)   e  head width
  f  feed-forward width                          v  vocabulary size
  n  state size (SSM)                            w  recurrence width
  l  layers                                      c  chunk length
"""

from typing import Any

import jax

Array = jax.Array
PyTree = Any
# Shapes are documented in docstrings with the letters above, e.g. ``x: f32[b, t, d]``.
