"""Training: run settings, the loop, jitted steps, k-member ensembles, optimizer, checkpoints, run identity, sweeps."""
