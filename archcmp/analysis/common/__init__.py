"""What several probes share: the command-line header (cli), capturing attention and hidden states, loading run tables, the ``--wandb`` options."""
