"""The classifier of a fine-tuned run loaded with :func:`archcmp.load_run`: class logits for texts.

``classify(loaded, items)`` lays each item out as the run was fine-tuned on it (one example per row,
:class:`~archcmp.data.classify.FinetuneFormatter`: the prompt ``BOS x SEP`` for a classifier head,
the task layout ``x -> label`` for ``generate``) and returns ``[N, C]`` float32 logits, class i
being the task's ``labels[i]``:

* ``last`` / ``mean`` / ``first``: the trained head on the pooled hidden states (what the run's
  evaluation scored);
* ``generate``: the LM logits of the label tokens at the position that must produce the label (a
  decoder or prefix-LM cannot see the label there, an encdec decoder reads only what precedes it,
  and the encoder sees a MASK in its place, so the placeholder label fed in does not matter).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from archcmp.data.example import Example
from archcmp.loading.loaded import Loaded


def classify(loaded: Loaded, items: Sequence[str | Example], batch_size: int = 64) -> np.ndarray:
    """Texts (the prompt, e.g. ``"12+7="``) or task Examples -> class logits [N, C] float32."""
    import jax
    from flax import nnx

    from archcmp.data import vocab
    from archcmp.data.classify import FinetuneFormatter
    from archcmp.model.heads import pool

    ft = loaded.info.get("finetune")
    if ft is None:
        raise ValueError(f"{loaded.source}: not a fine-tuned run (no finetune record in its summary.json)")
    if isinstance(items, (str, Example)):
        raise TypeError("items must be a list of texts or Examples, not a single one")
    task, head_kind = loaded.info["task"], ft["head"]
    label_ids = tuple(int(t) for t in task.label_ids)
    fmt = loaded.formatter
    rows = FinetuneFormatter(loaded.arch, fmt.seq_len, head_kind, label_ids, loaded.config.vocab_size, fmt.enc_len)
    examples = [it if isinstance(it, Example) else
                Example(np.asarray(loaded.encode(it), np.int32), np.array([label_ids[0], vocab.EOS], np.int32))
                for it in items]
    graphdef, state = nnx.split((loaded.model, loaded.head))

    @jax.jit
    def logits_of(state, m: dict) -> jax.Array:
        backbone, head = nnx.merge(graphdef, state)
        if head_kind == "generate":
            out = backbone(m)  # [B, T, V]
            at = jax.numpy.take_along_axis(out, m["label_pos"][:, None, None], axis=1)[:, 0]  # [B, V]
            return at[:, jax.numpy.asarray(label_ids)]  # [B, C]
        return head(pool(backbone.features(m), m, head_kind, loaded.arch))  # [B, C]

    out = []
    for j in range(0, len(examples), batch_size):
        chunk = examples[j:j + batch_size]
        batch = rows([[ex] for ex in chunk], batch_size)
        out.append(np.asarray(logits_of(state, batch["main"]), np.float32)[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, len(label_ids)), np.float32)
