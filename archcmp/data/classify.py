"""Batch layouts for fine-tuning on a classification task (:mod:`archcmp.data.downstream`).

One example per row (no packing: a classifier pools one row into one vector). For an example with
prompt x (n tokens) and label class c (token ``label_ids[c]``) the batch holds

  ``main``         the model's input, by head:
                   classifier heads (last / mean / first): the prompt alone, no answer and no MASK --
                     encoder, decoder, prefix_lm: ``BOS x SEP`` (prefix_lm: all of it the prefix);
                     encdec: encoder ``x``, decoder ``BOS``.  ``pool_index`` [B]: the position of the
                     last token (SEP; encdec: the decoder's BOS)
                   generate: the architecture's task layout of ``x -> label EOS`` (formatters.py);
                     ``label_pos`` [B]: the position whose output must be the label token
  ``labels``       [B] int32 class indices (0 on padding rows)
  ``row_weights``  [B] float32, 1 for a real row
  ``aux``          (with ``aux=True``) the architecture's own LM objective (``ArchSpec.lm_objective``)
                   on the prompt as a text, ``Example(inputs=[], targets=x)``: next-token prediction
                   for the decoder and prefix-LM, masked LM for the encoder, span corruption for
                   encdec -- GPT-1's auxiliary loss, in each architecture's own terms
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from archcmp.data import vocab
from archcmp.data.example import Example
from archcmp.data.formatters import Formatter, make_formatter
from archcmp.model.archs import arch_spec


@dataclass(frozen=True)
class FinetuneFormatter:
    """Rows of a classification task's Examples -> the fine-tuning batch (module docstring).

    Duck-types :class:`~archcmp.data.formatters.Formatter` for the batch iterator (``seq_len``,
    ``needs_rng``, ``__call__(rows, batch_size, rng)``)."""

    arch: str
    seq_len: int
    head: str
    label_ids: tuple[int, ...]
    vocab_size: int
    enc_len: int | None = None
    aux: bool = False
    task_fmt: Formatter = field(init=False)
    aux_fmt: Formatter | None = field(init=False)

    def __post_init__(self):
        spec = arch_spec(self.arch)
        if self.head not in spec.finetune_heads:
            raise ValueError(f"finetune.head={self.head!r}: not available for arch={self.arch!r}; choose one of "
                             f"{list(spec.finetune_heads)}")
        object.__setattr__(self, "task_fmt", make_formatter(self.arch, self.seq_len, self.enc_len))
        object.__setattr__(self, "enc_len", self.task_fmt.enc_len)
        aux_fmt = None
        if self.aux:
            options = {"objective": spec.lm_objective, "vocab_size": self.vocab_size}
            if spec.default_loss_on is not None:
                options["loss_on"] = "targets"  # the prompt's tokens, never the prefix's visible ones
            aux_fmt = make_formatter(self.arch, self.seq_len, self.enc_len, **options)
        object.__setattr__(self, "aux_fmt", aux_fmt)

    @property
    def needs_rng(self) -> bool:
        return self.aux_fmt is not None and self.aux_fmt.needs_rng

    def _classify_layout(self, rows: Sequence[Sequence[Example]], B: int) -> dict[str, np.ndarray]:
        T, spec = self.seq_len, arch_spec(self.arch)
        out = {k: np.zeros((B, T), np.int32) for k in ("inputs", "segment_ids", "positions")}
        out["pool_index"] = np.zeros(B, np.int32)
        if spec.prompt_is_prefix:
            out["prefix_mask"] = np.zeros((B, T), bool)
        if spec.encoder_stack:
            for k in ("enc_inputs", "enc_segment_ids", "enc_positions"):
                out[k] = np.zeros((B, self.enc_len), np.int32)
        for b, row in enumerate(rows):
            (ex,) = row
            x = ex.inputs
            if spec.encoder_stack:  # encoder reads x, the decoder's BOS reads the encoder
                out["enc_inputs"][b, :x.size] = x
                out["enc_segment_ids"][b, :x.size] = 1
                out["enc_positions"][b, :x.size] = np.arange(x.size)
                tokens = np.array([vocab.BOS], np.int32)
            else:
                tokens = np.concatenate([[vocab.BOS], x, [vocab.SEP]]).astype(np.int32)
            L = tokens.size
            out["inputs"][b, :L] = tokens
            out["segment_ids"][b, :L] = 1
            out["positions"][b, :L] = np.arange(L)
            out["pool_index"][b] = L - 1
            if spec.prompt_is_prefix:
                out["prefix_mask"][b, :L] = True
        return out

    def __call__(self, rows: Sequence[Sequence[Example]], batch_size: int | None = None,
                 rng: np.random.Generator | None = None) -> dict:
        B = len(rows) if batch_size is None else batch_size
        if any(len(row) != 1 for row in rows):
            raise ValueError("fine-tuning batches hold one example per row (pack with packing=False)")
        labels = np.zeros(B, np.int32)
        for b, (ex,) in enumerate(rows):
            hits = np.flatnonzero(np.asarray(self.label_ids) == int(ex.targets[0]))
            if hits.size != 1:
                raise ValueError(f"row {b}: target {ex.targets.tolist()} does not start with one of the label "
                                 f"tokens {list(self.label_ids)}")
            labels[b] = hits[0]
        if self.head == "generate":
            main = self.task_fmt(rows, B)
            main["label_pos"] = np.argmax(main["eval_weights"] > 0, axis=1).astype(np.int32)
        else:
            main = self._classify_layout(rows, B)
        out = {"main": main, "labels": labels,
               "row_weights": (np.arange(B) < len(rows)).astype(np.float32)}
        if self.aux_fmt is not None:
            text_rows = [[Example(ex.inputs[:0], ex.inputs)] for (ex,) in rows]
            out["aux"] = self.aux_fmt(text_rows, B, rng)
        return out
