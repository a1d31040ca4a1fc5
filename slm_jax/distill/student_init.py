"""``distill.init: every_other_layer``: a student initialised from its teacher, one layer in two.

DistilBERT (Sanh et al. 2019, arXiv:1910.01108, Sec. 3) starts its 6-layer student from BERT by
taking one of every two teacher layers. Here student layer i gets teacher layer 2i (layers 0, 2,
4, ...), and the embedding, final norm and (untied) output head are copied as they are. Widths,
vocabulary and each layer's parameter shapes must match; a ``scan_layers`` teacher or student is
converted through models/lm.py's ``unstack_layers`` / ``stack_layers``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from slm_jax.array_typing import PyTree
from slm_jax.config import ModelConfig
from slm_jax.errors import ConfigError
from slm_jax.models.lm import abstract_params, stack_layers, unstack_layers


def teacher_layer(i: int) -> int:
    """The teacher layer that student layer ``i`` starts from."""
    return 2 * i


def every_other_layer(teacher_params: PyTree, teacher_cfg: ModelConfig, student_cfg: ModelConfig) -> PyTree:
    """Student params {"params": ...} built from the teacher's (module docstring); one sentence if they cannot map."""
    n_t, n_s = teacher_cfg.n_layers, student_cfg.n_layers
    if teacher_layer(n_s - 1) >= n_t:
        raise ConfigError(
            f"distill.init=every_other_layer takes teacher layers 0, 2, 4, ..., so a {n_s}-layer student needs a "
            f"teacher of at least {teacher_layer(n_s - 1) + 1} layers, and the teacher has {n_t}; "
            f"use at most {(n_t + 1) // 2} student layers."
        )
    if teacher_cfg.d_model != student_cfg.d_model:
        raise ConfigError(
            f"distill.init=every_other_layer copies the teacher's weights, but its d_model is {teacher_cfg.d_model} "
            f"and the student's {student_cfg.d_model}; give the student the teacher's width or clear distill.init."
        )
    teacher = teacher_params if not teacher_cfg.scan_layers else unstack_layers(teacher_params, teacher_cfg)
    want = abstract_params(student_cfg)
    if student_cfg.scan_layers:
        want = jax.eval_shape(lambda tree: unstack_layers(tree, student_cfg), want)
    out = {}
    for name, shapes in want["params"].items():
        source = f"layers_{teacher_layer(int(name.split('_')[1]))}" if name.startswith("layers_") else name
        if source not in teacher["params"] or not _same_shapes(teacher["params"][source], shapes):
            raise ConfigError(
                f"distill.init=every_other_layer cannot start the student's {name} from the teacher's {source}: "
                "their parameters differ (another mixer, MLP or head); match the student's layer pattern to the "
                "teacher's even layers or clear distill.init."
            )
        out[name] = jax.tree.map(jnp.asarray, teacher["params"][source])
    params = {"params": out}
    return stack_layers(params, student_cfg) if student_cfg.scan_layers else params


def _same_shapes(a: PyTree, b: PyTree) -> bool:
    """Whether two parameter subtrees have the same structure and leaf shapes."""
    leaves = lambda tree: [(jax.tree_util.keystr(k), x.shape) for k, x in jax.tree_util.tree_leaves_with_path(tree)]
    return leaves(a) == leaves(b)
