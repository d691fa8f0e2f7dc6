"""A loaded model with what it needs to read text: :class:`Loaded`, returned by
:func:`archcmp.load_run` (a run of ours) and :func:`archcmp.load_pretrained` (an imported checkpoint).

``Loaded.batch(texts)`` lays texts out as a model batch of the model's architecture, one text a
row, padded with segment id 0 (padding is masked in attention and cut away by
:func:`archcmp.attention` / :func:`archcmp.hidden_states`). For an encoder-decoder the encoder
reads the text and the decoder is fed the same text after a start token (teacher forcing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from archcmp.model.config import ModelConfig
from archcmp.model.archs import arch_spec


@dataclass
class Loaded:
    """A model ready for analysis.

    model      the archcmp model (Flax NNX), float32 parameters
    config     its :class:`~archcmp.model.config.ModelConfig`
    tokenizer  ``tokenizers.Tokenizer`` (imported checkpoints) or archcmp's tokenizer (runs)
    encode     text -> int32 token ids, special tokens included as the model expects them
    source     the run or checkpoint directory
    info       what was loaded: ``kind`` ("run" / "pretrained"), step, model_type, timings, ...
    formatter  runs only: the run's :class:`~archcmp.data.formatters.Formatter` (task layout)
    head       fine-tuned runs only: the trained :class:`~archcmp.model.heads.ClassifierHead`
               (None otherwise, and for ``finetune.head=generate``)
    """

    model: Any
    config: ModelConfig
    tokenizer: Any
    encode: Callable[[str], np.ndarray]
    source: Path
    info: dict = field(default_factory=dict)
    formatter: Any = None
    head: Any = None

    @property
    def arch(self) -> str:
        return self.config.arch

    def batch(self, texts: Sequence[str], max_tokens: int | None = None) -> dict[str, np.ndarray]:
        """Texts -> model batch (numpy), one text a row; ``max_tokens`` truncates each text's ids."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        if self.formatter is not None:
            return format_texts(self.formatter, self.encode, texts, max_tokens)
        limit = self.config.max_len if max_tokens is None else max_tokens
        ids = [np.asarray(self.encode(t), np.int32)[:limit] for t in texts]
        return text_batch(ids, self.arch, int(self.info.get("decoder_start_id", 0)))


def text_batch(ids: Sequence[np.ndarray], arch: str, decoder_start_id: int = 0) -> dict[str, np.ndarray]:
    """Token id lists -> a padded batch of ``arch`` (one row each; segment 1 = text, 0 = padding).

    Single stacks get ``inputs``/``segment_ids``/``positions`` (``prefix_mask`` all prefix for
    prefix_lm); encdec gets the text in the encoder and ``[start] + text[:-1]`` in the decoder.
    """
    if not ids or any(len(x) == 0 for x in ids):
        raise ValueError("text_batch: every text must have at least one token")

    def pad(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        T = max(len(r) for r in rows)
        tok = np.zeros((len(rows), T), np.int32)
        seg = np.zeros((len(rows), T), np.int32)
        for b, r in enumerate(rows):
            tok[b, :len(r)], seg[b, :len(r)] = r, 1
        pos = np.where(seg > 0, np.arange(T, dtype=np.int32)[None, :], 0)
        return tok, seg, pos

    tok, seg, pos = pad(ids)
    if not arch_spec(arch).encoder_stack:
        out = {"inputs": tok, "segment_ids": seg, "positions": pos}
        if arch_spec(arch).prompt_is_prefix:
            out["prefix_mask"] = seg > 0
        return out
    dec = [np.concatenate([[decoder_start_id], r[:-1]]).astype(np.int32) for r in ids]
    dtok, dseg, dpos = pad(dec)
    return {"enc_inputs": tok, "enc_segment_ids": seg, "enc_positions": pos,
            "inputs": dtok, "segment_ids": dseg, "positions": dpos}


def format_texts(formatter, encode: Callable[[str], np.ndarray], texts: Sequence[str],
                 max_tokens: int | None = None) -> dict[str, np.ndarray]:
    """Our runs: texts in the task layout of the run's formatter (its BOS/EOS conventions), one text
    a row, each cut to ``max_tokens`` ids (default: what a row holds, ``seq_len - 2``); encdec reads
    the text and reconstructs it."""
    from archcmp.data.example import Example
    from archcmp.data.formatters import format_examples

    limit = formatter.seq_len - 2 if max_tokens is None else max_tokens
    ids = [np.asarray(encode(t), np.int32)[:limit] for t in texts]
    empty = np.zeros(0, np.int32)
    examples = [Example(x, x if arch_spec(formatter.arch).encoder_stack else empty) for x in ids]
    return format_examples(formatter, examples, len(examples), packing=False)
