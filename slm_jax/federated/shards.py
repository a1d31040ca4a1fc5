"""``slm data partition``: write each client's data as its own prepared directory, plus a manifest.

Layout of ``out_dir``: ``client_000/`` ... (each a prepared data directory in the token-file
format of data/prepare.py: ``train.bin``, ``val.bin``, ``tokenizer.json``, ``meta.json``, so a
shard can be trained on, evaluated or handed to one Flower client) and ``partition.json``, the
manifest: the partition settings, every client's name, directory and token counts, and the size
statistics (partition.size_stats).
"""

from __future__ import annotations

import json
from pathlib import Path

from slm_jax.config import Config
from slm_jax.data.token_files import DTYPES, META_FILE, split_path, token_dtype
from slm_jax.data.tokenizers import save_tokenizer
from slm_jax.errors import ConfigError
from slm_jax.federated.partition import Client, size_stats

MANIFEST = "partition.json"


def write_client(client: Client, tokenizer, out_dir: Path, source: dict) -> dict:
    """One client's prepared directory; returns its ``meta.json`` dict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = token_dtype(tokenizer.vocab_size)
    (out_dir / META_FILE).unlink(missing_ok=True)  # an overwrite in progress is not a prepared dir
    for split, tokens in (("train", client.train), ("val", client.val)):
        tokens.astype(DTYPES[name]).tofile(split_path(out_dir, split))
    save_tokenizer(tokenizer, out_dir)
    meta = {
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "dtype": name,
        "train_tokens": len(client.train),
        "val_tokens": len(client.val),
        "client": client.name,
        "sources": [source],
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")  # last: marks it complete
    return meta


def write_partition(cfg: Config, out_dir: str | Path) -> dict:
    """Partition ``cfg``'s data as ``train.federated`` says and write it to ``out_dir``; return the manifest."""
    from slm_jax.federated.train import load_clients  # the trainer's own partitioning, not a copy of it

    f = cfg.train.federated
    if f.partition != "role" and f.n_clients <= 0:
        raise ConfigError(
            f"train.federated.n_clients must be set (> 0) for the {f.partition} partition; "
            "it says how many clients share the data."
        )
    cfg, clients, tokenizer, _ = load_clients(cfg)
    out_dir = Path(out_dir)
    source = {"data": cfg.data.path or cfg.data.synthetic, "partition": f.partition}
    entries = []
    for k, client in enumerate(clients):
        name = f"client_{k:03d}"
        meta = write_client(client, tokenizer, out_dir / name, source)
        entries.append({"name": client.name, "dir": name, **{s: meta[f"{s}_tokens"] for s in ("train", "val")}})
    manifest = {
        "partition": f.partition,
        "n_clients": len(clients),
        "seed": cfg.train.seed,
        "seq_len": cfg.train.seq_len,
        **({"dirichlet_alpha": f.dirichlet_alpha} if f.partition == "dirichlet" else {}),
        "data": source["data"],
        "stats": size_stats(clients),
        "clients": entries,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return manifest


def describe(manifest: dict) -> str:
    """Two lines of size statistics for the terminal."""
    s = manifest["stats"]
    return (
        f"{s['clients']} clients ({manifest['partition']}), {s['tokens_total']:,} training tokens\n"
        f"tokens per client: min {s['tokens_min']:,}, median {s['tokens_median']:,.0f}, max {s['tokens_max']:,}; "
        f"Gini {s['tokens_gini']:.3f}"
    )
