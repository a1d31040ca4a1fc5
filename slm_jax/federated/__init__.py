"""Federated and low-communication training on simulated clients (docs/federated.md).

partition.py (client data), client.py (local training: the only code that sees a client's data),
compression.py, privacy.py and secure_agg.py (what a client does to its update before sending it),
server.py (aggregation and server optimizers: sees only updates and counts), rounds.py (one round,
clients vmapped in groups) and train.py (``slm train`` with ``train.federated.algorithm`` set).
"""
