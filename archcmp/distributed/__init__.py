"""Processes, devices and array placement: device presets, ``jax.distributed``, CPU shares, mesh and sharding rules."""
