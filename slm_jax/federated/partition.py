"""Client data partitions: IID shares (the control), Tiny Shakespeare by speaking role (LEAF), Dirichlet skew.

LEAF (Caldas et al. 2018, arXiv:1812.01097) makes each speaking role of the plays a client with
its own train/val split: a naturally non-IID partition (roles differ in style and in size by
orders of magnitude). Tiny Shakespeare marks a speech as a paragraph whose first line is the
speaker's name and a colon (``"First Citizen:\\n"``); the client's text is the lines it speaks.

Dirichlet label skew (Hsu et al. 2019, arXiv:1909.06335): for each label c, client shares
``p_c ~ Dir(alpha * 1_K)`` and the examples of label c are dealt to the K clients in those
shares; alpha -> 0 gives each client few labels, alpha -> inf the IID split. For the generated
corpora (data/corpora.py) an example is a line and its label is the line's first token: the
leading digit of the first operand for ``arithmetic``, the word's first letter for ``reverse``
(a topic the model learns from: the reversal ends with it). Any line-structured text works.
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


def line_labels(tokens: np.ndarray, newline: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lengths i64[n], labels i64[n])`` of the n lines of ``tokens`` (each ends with ``newline`` but maybe the last).

    A line's label is its first token.
    """
    ends = np.flatnonzero(np.asarray(tokens) == newline) + 1
    if len(ends) == 0 or ends[-1] != len(tokens):
        ends = np.append(ends, len(tokens))
    starts = np.concatenate([[0], ends[:-1]])
    return ends - starts, np.asarray(tokens)[starts].astype(np.int64)


def dirichlet_shares(labels: np.ndarray, n_clients: int, alpha: float, seed: int) -> dict[int, np.ndarray]:
    """Label -> its f64[K] client shares drawn from Dir(alpha * 1_K), in sorted label order from ``seed``."""
    rng = np.random.default_rng([seed, 11])
    return {int(c): rng.dirichlet(np.full(n_clients, alpha)) for c in np.unique(labels)}


def deal(labels: np.ndarray, shares: dict[int, np.ndarray], seed: int) -> np.ndarray:
    """i64[n] owner of each example: the examples of each label, shuffled, cut in that label's shares."""
    rng = np.random.default_rng([seed, 13])
    owner = np.empty(len(labels), np.int64)
    for c, p in shares.items():
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.floor(np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        owner[idx] = np.searchsorted(cuts, np.arange(len(idx)), side="right")
    return owner


def dirichlet_clients(
    train: np.ndarray, val: np.ndarray, newline: int, n_clients: int, alpha: float, min_tokens: int, seed: int
) -> list[Client]:
    """``n_clients`` clients with Dirichlet(alpha) label skew over the lines of ``train`` and ``val``.

    Both splits are dealt with the same shares per label, so a client's validation data follows
    its own label mix; a client keeps its lines in corpus order.
    """
    train_len, train_lab = line_labels(train, newline)
    val_len, val_lab = line_labels(val, newline)
    shares = dirichlet_shares(np.concatenate([train_lab, val_lab]), n_clients, alpha, seed)
    token_owner = {
        "train": np.repeat(deal(train_lab, shares, seed), train_len),
        "val": np.repeat(deal(val_lab, shares, seed + 1), val_len),
    }
    clients = []
    for k in range(n_clients):
        parts = {name: np.asarray(tokens)[token_owner[name] == k] for name, tokens in (("train", train), ("val", val))}
        if min(len(parts["train"]), len(parts["val"])) < min_tokens:
            raise ConfigError(
                f"train.federated.dirichlet_alpha={alpha:g} left client {k} with {len(parts['train'])} train and "
                f"{len(parts['val'])} val tokens, under one window ({min_tokens}) in a split; raise "
                "train.federated.dirichlet_alpha or lower train.federated.n_clients."
            )
        clients.append(Client(f"dir{k}", parts["train"], parts["val"]))
    return clients


def gini(sizes: np.ndarray) -> float:
    """Gini coefficient of ``sizes``: 0 when all equal, -> 1 when one holds everything."""
    x = np.sort(np.asarray(sizes, np.float64))
    n = len(x)
    return float(2 * np.sum(np.arange(1, n + 1) * x) / (n * x.sum()) - (n + 1) / n) if x.sum() else 0.0


def size_stats(clients: list[Client]) -> dict:
    """Client count and the spread of their training sizes (tokens), with its Gini coefficient."""
    sizes = np.array([c.size for c in clients])
    return {
        "clients": len(clients),
        "tokens_total": int(sizes.sum()),
        "tokens_min": int(sizes.min()),
        "tokens_median": float(np.median(sizes)),
        "tokens_max": int(sizes.max()),
        "tokens_gini": round(gini(sizes), 4),
    }
