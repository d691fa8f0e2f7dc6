"""Per-layer, per-head attention probabilities and hidden states of any archcmp model, with padding
cut away: the public analysis functions :func:`attention` and :func:`hidden_states`.

Both take a :class:`~archcmp.loading.loaded.Loaded` (from :func:`archcmp.load_run` or
:func:`archcmp.load_pretrained`) with a list of texts, or a model with a batch dict, and return
one array per example (a row's segment: a text, or a packed example of a task batch):

* ``attention`` -> ``{kind: [array [L, H, n_q, n_k], ...]}``; kinds ``self`` (single stack) or
  ``enc_self``, ``dec_self``, ``cross`` (encdec). Rows are query tokens, columns key tokens; each
  row sums to 1 over the example's own tokens.
* ``hidden_states`` -> ``{stack: [array [L + 1, n, D], ...]}``; stacks ``stack`` or ``enc``,
  ``dec``. Entry 0 is the input of the first block (embeddings, positions, embedding norm),
  entry l the output of block l, and the last entry has the stack's final norm applied when it
  has one (the convention of Hugging Face's ``output_hidden_states``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from archcmp.loading.loaded import Loaded
from archcmp.model.archs import arch_spec

_STACKS = {"hidden": "stack", "enc_hidden": "enc", "dec_hidden": "dec"}


def _model_and_batch(model: Any, data: Any) -> tuple[Any, dict]:
    if isinstance(model, Loaded):
        batch = model.batch(data) if _is_texts(data) else dict(data)
        return model.model, batch
    if _is_texts(data):
        raise TypeError("texts need a Loaded model (load_run / load_pretrained) for its tokenizer; "
                        "pass a batch dict with a bare model")
    return model, dict(data)


def _is_texts(data: Any) -> bool:
    return isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data)


def _forward(model, batch: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
    import jax
    from flax import nnx

    from archcmp.analysis.common.capture import model_batch

    graphdef, state = nnx.split(model)
    fn = _compiled(graphdef)
    logits, extras, inputs, finals = jax.device_get(fn(state, model_batch(batch)))
    return logits, {"extras": extras, "inputs": inputs, "finals": finals}


_CACHE: dict = {}


def _compiled(graphdef):
    """One jitted forward per model structure: logits, attention/hidden extras, each stack's input
    (block 0's input) and final-normed output."""
    import jax
    from flax import nnx

    key = graphdef
    if key in _CACHE:
        return _CACHE[key]

    @jax.jit
    def fn(state, batch):
        model = nnx.merge(graphdef, state)
        logits, extras = model(batch, return_attention=True, return_hidden=True)
        inputs, finals = {}, {}
        if arch_spec(model.cfg.arch).encoder_stack:
            stacks = {"enc": (model.encoder, batch["enc_inputs"], batch["enc_positions"]),
                      "dec": (model.decoder, batch["inputs"], batch["positions"])}
        else:
            stacks = {"stack": (model.stack, batch["inputs"], batch["positions"])}
        for name, (stack, ids, pos) in stacks.items():
            types = batch.get("token_types") if name == "stack" else None
            inputs[name] = stack.embed_inputs(model.embed(ids, types), pos)
            last = extras["hidden" if name == "stack" else f"{name}_hidden"][-1]
            finals[name] = last if stack.final_norm is None else stack.final_norm(last)
        return logits, extras, inputs, finals

    _CACHE[key] = fn
    return fn


def _segments(batch: Mapping[str, Any], stack: str) -> np.ndarray:
    return np.asarray(batch["enc_segment_ids"] if stack == "enc" else batch["segment_ids"])


def _examples(seg_q: np.ndarray, seg_k: np.ndarray):
    """(row, query index, key index) of every example (segment id > 0), in row-major order."""
    for b in range(seg_q.shape[0]):
        for s in np.unique(seg_q[b]):
            if s > 0:
                yield b, np.flatnonzero(seg_q[b] == s), np.flatnonzero(seg_k[b] == s)


def attention(model: Any, data: Sequence[str] | Mapping[str, Any]) -> dict[str, list[np.ndarray]]:
    """Attention probabilities per example: ``{kind: [[L, H, n_q, n_k] float32, ...]}`` (see module doc)."""
    m, batch = _model_and_batch(model, data)
    _, out = _forward(m, batch)
    result: dict[str, list[np.ndarray]] = {}
    for kind, probs in out["extras"].items():
        if kind in _STACKS:
            continue
        q_stack = "enc" if kind == "enc_self" else "dec" if kind in ("dec_self", "cross") else "stack"
        k_stack = "enc" if kind in ("enc_self", "cross") else q_stack
        probs = np.asarray(probs)  # [L, B, H, Tq, Tk]
        result[kind] = [probs[:, b][:, :, q][:, :, :, k]
                        for b, q, k in _examples(_segments(batch, q_stack), _segments(batch, k_stack))]
    return result


def hidden_states(model: Any, data: Sequence[str] | Mapping[str, Any]) -> dict[str, list[np.ndarray]]:
    """Hidden states per example: ``{stack: [[L + 1, n, D] float32, ...]}`` (see module doc)."""
    m, batch = _model_and_batch(model, data)
    _, out = _forward(m, batch)
    result: dict[str, list[np.ndarray]] = {}
    for key, name in _STACKS.items():
        if key not in out["extras"]:
            continue
        blocks = np.asarray(out["extras"][key])  # [L, B, T, D], block outputs before any final norm
        full = np.concatenate([np.asarray(out["inputs"][name])[None], blocks[:-1],
                               np.asarray(out["finals"][name])[None]])  # [L + 1, B, T, D]
        seg = _segments(batch, name)
        result[name] = [full[:, b, q] for b, q, _ in _examples(seg, seg)]
    return result


def logits(model: Any, data: Sequence[str] | Mapping[str, Any]) -> list[np.ndarray]:
    """Output logits per example (decoder side for encdec): ``[[n, V] float32, ...]``."""
    m, batch = _model_and_batch(model, data)
    out, _ = _forward(m, batch)
    seg = _segments(batch, "dec")
    return [np.asarray(out)[b, q] for b, q, _ in _examples(seg, seg)]
