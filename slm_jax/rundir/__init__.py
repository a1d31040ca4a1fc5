"""The run directory's one owner: its files, its lock, its checkpoints, and the params inside them."""
