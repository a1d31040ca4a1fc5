"""optax AdamW with learning-rate schedules, a weight-decay mask and frozen parameters.

Masks are chosen by parameter path: a parameter whose "/"-joined path contains one of the
configured substrings is excluded from weight decay (``optim.no_decay``) or from training
(``optim.frozen``).
"""

from typing import Callable

import jax
import optax

from slm_jax.array_typing import PyTree
from slm_jax.config import OptimConfig
from slm_jax.errors import ConfigError
from slm_jax.tree_paths import path_str


def path_mask(params: PyTree, patterns: tuple[str, ...]) -> PyTree:
    """A bool pytree: True where the parameter path contains any of ``patterns``."""
    return jax.tree_util.tree_map_with_path(lambda p, _: any(s in path_str(p) for s in patterns), params)


def make_schedule(cfg: OptimConfig, total_steps: int) -> Callable:
    """Linear warmup to ``lr``, then cosine to ``min_lr``, warmup-stable-decay, or constant.

    WSD (Hu et al. 2024, MiniCPM): hold ``lr`` and decay linearly to ``min_lr`` over the last
    ``decay_fraction`` of the steps.
    """
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    rest = max(total_steps - warmup, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, rest, alpha=cfg.min_lr / cfg.lr)
    elif cfg.schedule == "wsd":
        decay = max(int(round(cfg.decay_fraction * rest)), 1)
        after = optax.join_schedules(
            [optax.constant_schedule(cfg.lr), optax.linear_schedule(cfg.lr, cfg.min_lr, decay)], [rest - decay]
        )
    else:
        after = optax.constant_schedule(cfg.lr)
    if not warmup:
        return after
    return optax.join_schedules([optax.linear_schedule(cfg.lr / warmup, cfg.lr, warmup - 1), after], [warmup])


def make_optimizer(cfg: OptimConfig, total_steps: int, params: PyTree) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, schedule) for ``params``; frozen parameters get zero updates and no state."""
    schedule = make_schedule(cfg, total_steps)
    decay = jax.tree.map(lambda no: not no, path_mask(params, cfg.no_decay))
    adamw = optax.adamw(schedule, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay)
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw) if cfg.grad_clip else adamw
    if cfg.frozen:
        frozen = path_mask(params, cfg.frozen)
        if not any(jax.tree.leaves(frozen)):
            raise ConfigError(
                f"optim.frozen patterns {list(cfg.frozen)} match no parameter path; "
                "check the names with `slm config show` and the model's parameter paths."
            )
        labels = jax.tree.map(lambda f: "frozen" if f else "train", frozen)
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule
