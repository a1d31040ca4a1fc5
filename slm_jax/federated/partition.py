"""Client data partitions: IID shares (the control) and Tiny Shakespeare by speaking role (LEAF).

LEAF (Caldas et al. 2018, arXiv:1812.01097) makes each speaking role of the plays a client with
its own train/val split: a naturally non-IID partition (roles differ in style and in size by
orders of magnitude). Tiny Shakespeare marks a speech as a paragraph whose first line is the
speaker's name and a colon (``"First Citizen:\\n"``); the client's text is the lines it speaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from slm_jax.data.tokenizers import Tokenizer
from slm_jax.errors import ConfigError, DataError

_SPEAKER = re.compile(r"^([A-Za-z][A-Za-z' .,-]*):$")


@dataclass(frozen=True)
class Client:
    """One client's data: ``train`` (n,) and ``val`` (m,) token ids; ``size`` weights its update."""

    name: str
    train: np.ndarray
    val: np.ndarray

    @property
    def size(self) -> int:
        """Training tokens held (FedAvg's n_k)."""
        return len(self.train)


def speaking_roles(text: str) -> dict[str, str]:
    """Role name -> the lines it speaks, in order (speeches joined by newlines), from Tiny Shakespeare text."""
    roles: dict[str, list[str]] = {}
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.strip("\n").split("\n")
        match = _SPEAKER.match(lines[0].strip())
        if match and len(lines) > 1:
            roles.setdefault(match.group(1), []).append("\n".join(lines[1:]))
    return {name: "\n".join(speeches) + "\n" for name, speeches in roles.items()}


def role_clients(
    text: str, tokenizer: Tokenizer, val_fraction: float, min_tokens: int, n_clients: int = 0
) -> list[Client]:
    """One client per speaking role with at least ``min_tokens`` in each split (LEAF drops tiny roles too).

    Each role's text is split in order: the last ``val_fraction`` is its validation data.
    ``n_clients`` > 0 keeps the largest roles (ties by name); 0 keeps every role big enough.
    """
    roles = speaking_roles(text)
    if not roles:
        raise DataError(
            "train.federated.partition=role found no speaking roles (paragraphs starting with 'NAME:'); "
            "point data.path at Tiny Shakespeare or use partition=iid."
        )
    clients = []
    for name, speech in roles.items():
        ids = tokenizer.encode(speech)
        cut = len(ids) - int(round(val_fraction * len(ids)))
        if min(cut, len(ids) - cut) >= min_tokens:
            clients.append(Client(name, ids[:cut], ids[cut:]))
    clients.sort(key=lambda c: (-c.size, c.name))
    if n_clients > len(clients):
        raise ConfigError(
            f"train.federated.n_clients ({n_clients}) is more than the {len(clients)} roles with at least {min_tokens} "
            "tokens in each split; lower it, or set 0 to use them all."
        )
    if not clients:
        raise DataError(
            f"No speaking role has {min_tokens} tokens in both its train and val split; lower train.seq_len."
        )
    return clients[: n_clients or len(clients)]


def iid_clients(
    train: np.ndarray, val: np.ndarray, n_clients: int, block: int, min_tokens: int, seed: int
) -> list[Client]:
    """``n_clients`` equal random shares: blocks of ``block`` train tokens dealt out after a seeded shuffle.

    Validation data is cut into ``n_clients`` contiguous equal parts of at least ``min_tokens``.
    """
    n_blocks = len(train) // block
    if n_blocks < n_clients or len(val) // n_clients < min_tokens:
        raise ConfigError(
            f"The data is too small for train.federated.n_clients={n_clients} IID clients with blocks of {block} "
            "tokens each; lower n_clients or train.seq_len, or use more data."
        )
    order = np.random.default_rng([seed, 7]).permutation(n_blocks)
    blocks = np.asarray(train[: n_blocks * block]).reshape(n_blocks, block)
    per_client = n_blocks // n_clients
    val_part = len(val) // n_clients
    return [
        Client(
            f"iid{k}",
            blocks[order[k * per_client : (k + 1) * per_client]].reshape(-1),
            np.asarray(val[k * val_part : (k + 1) * val_part]),
        )
        for k in range(n_clients)
    ]


def size_stats(clients: list[Client]) -> dict:
    """Client count and the spread of their training sizes (tokens)."""
    sizes = np.array([c.size for c in clients])
    return {
        "clients": len(clients),
        "tokens_total": int(sizes.sum()),
        "tokens_min": int(sizes.min()),
        "tokens_median": float(np.median(sizes)),
        "tokens_max": int(sizes.max()),
    }
