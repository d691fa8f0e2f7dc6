"""Compose the project's Hydra config in tests (no Hydra run directory involved)."""
from pathlib import Path

from hydra import compose, initialize_config_dir

from archcmp.training.loop import CONF_DIR

TINY = ["size=nano", "train.steps=4", "train.batch_size=8", "train.eval_examples=16",
        "train.eval_batch_size=8", "train.log_every=1", "train.eval_every=2", "train.checkpoint_every=2",
        "train.progress=false", "task.seq_len=24"]


def compose_cfg(overrides: list[str], return_hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(Path(CONF_DIR)), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
