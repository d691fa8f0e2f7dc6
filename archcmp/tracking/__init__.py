"""Experiment tracking: the tracker interface with its JSONL / null backends, and the wandb backend."""
