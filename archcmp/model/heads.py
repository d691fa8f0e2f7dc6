"""Classifier heads for fine-tuning: pool a model's hidden states to one vector per row, project it
to class logits.

``features`` is a model's :meth:`features` output (``{"tokens": [B, T, D], "memory": [B, S, D] or
None}``); the batch is a classification layout (:mod:`archcmp.data.classify`, one example per row):

  first   ``tokens[:, 0]``                       (BOS; bidirectional stacks only, see ArchSpec)
  last    ``tokens[b, pool_index[b]]``           (the SEP after the prompt; encdec: the decoder's BOS)
  mean    mean over the row's real tokens of ``memory`` when the model has an encoder stack,
          else of ``tokens`` (padding excluded via the segment ids)
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from archcmp.model.archs import arch_spec

Array = jax.Array


def pool(features: Mapping[str, Array | None], batch: Mapping[str, Array], how: str, arch: str) -> Array:
    """-> [B, D] float32, one vector per row (see the module docstring)."""
    if how not in arch_spec(arch).classifier_heads:
        raise ValueError(f"head {how!r} is not available for arch={arch!r}; choose one of "
                         f"{list(arch_spec(arch).classifier_heads)}")
    tokens = features["tokens"].astype(jnp.float32)  # [B, T, D]
    if how == "first":
        return tokens[:, 0]
    if how == "last":
        idx = batch["pool_index"].astype(jnp.int32)  # [B]
        return jnp.take_along_axis(tokens, idx[:, None, None], axis=1)[:, 0]
    if arch_spec(arch).encoder_stack:
        states, seg = features["memory"].astype(jnp.float32), batch["enc_segment_ids"]
    else:
        states, seg = tokens, batch["segment_ids"]
    w = (seg > 0).astype(jnp.float32)[..., None]  # [B, T, 1]
    return jnp.sum(states * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)


class ClassifierHead(nnx.Module):
    """Linear D -> C with a bias; the kernel starts small (normal, std 0.02) and the bias at zero,
    so the first logits are near zero (loss near log C) whatever the pooled vector's scale."""

    def __init__(self, d_model: int, num_classes: int, seed: int):
        key = jax.random.key(seed)
        self.kernel = nnx.Param(0.02 * jax.random.normal(key, (d_model, num_classes), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_classes,), jnp.float32))

    def __call__(self, pooled: Array) -> Array:
        """pooled [B, D] -> logits [B, C] float32."""
        return pooled @ self.kernel[...] + self.bias[...]
