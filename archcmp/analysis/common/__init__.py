"""What several probes share: capturing attention and hidden states, loading run tables, the ``--wandb`` options."""
