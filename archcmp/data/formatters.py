"""Per-architecture formatters: rows of Examples -> numpy batch dict (docs/design.md "Batches").

Layouts for one example (x = inputs, n tokens; y = targets, m tokens):

  decoder    tokens  BOS x SEP y;  inputs = tokens[:-1], targets = tokens[1:]        (n+m+1)
             weights: loss_on='targets' (default) -> positions predicting y;  'all' -> every position
  prefix_lm  same tokens; prefix_mask True on BOS x SEP (n+2 positions)
             weights: positions predicting y; loss_on='all' also scores the prefix positions
             (caution: inside a bidirectional prefix the next token is visible, so those
             positions are trivially solvable -- diagnostics only)
  encdec     'task': enc_inputs = x; inputs = BOS y[:-1]; targets = y               (n | m)
             'span': T5 span corruption of x+y (``noising.span_corrupt``): enc_inputs = corrupted,
             targets = sentinel/span stream, inputs = BOS targets[:-1]
  encoder    'task': inputs = BOS x SEP MASK*m; targets = y at the MASK slots      (n+m+2)
             'mlm':  BERT 80/10/10 masking of ``mlm_rate`` of BOS x SEP y (BOS/SEP never chosen);
                     ``mlm_replacement='mask'``: every chosen token becomes MASK

eval_weights marks exactly the positions predicting y in the task layouts (so all four
architectures are scored on the same tokens); it is all zero in the pretraining layouts
('span', 'mlm'), whose targets are not the task's answers.

Packing: each row holds one or more examples; segment ids 1, 2, ... in row order, positions
restart at 0 per segment, padding has segment id 0, position 0, token 0 and weight 0. On the
encdec side example k of a row has segment id k on both encoder and decoder.
Which examples share a row is decided by ``packing.pack_rows`` (arch independent).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from archcmp.data import vocab
from archcmp.data.example import Example
from archcmp.data.noising import MLM_REPLACEMENTS, mlm_corrupt, span_corrupt
from archcmp.data.packing import pack_rows
from archcmp.model.archs import ArchSpec, arch_spec



@dataclass
class _Segment:
    """One example laid out for one stack: all arrays have the segment's length."""

    inputs: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    eval_weights: np.ndarray
    prefix: np.ndarray


def _seg(inputs, targets, weights, eval_weights, prefix=None) -> _Segment:
    inputs = np.asarray(inputs, np.int32)
    return _Segment(inputs, np.asarray(targets, np.int32), np.asarray(weights, np.float32),
                    np.asarray(eval_weights, np.float32),
                    np.zeros(inputs.size, bool) if prefix is None else np.asarray(prefix, bool))


@dataclass(frozen=True)
class Formatter:
    """Turns rows of Examples into a fixed-shape batch for one architecture and objective.

    ``seq_len`` T is the row length ([B, T] arrays); ``enc_len`` S the encdec encoder length
    (default T, must be >= T - 2 so the shared fit rule guarantees encdec rows fit).
    ``vocab_size`` is needed by the 'mlm' objective (random replacement tokens).
    """

    arch: str
    seq_len: int
    enc_len: int | None = None
    objective: str = "task"
    loss_on: str | None = None
    vocab_size: int | None = None
    mlm_rate: float = 0.15
    mlm_replacement: str = "bert"
    noise_density: float = 0.15
    mean_span: float = 3.0

    def __post_init__(self):
        spec = arch_spec(self.arch)
        if self.objective not in spec.objectives:
            raise ValueError(f"objective for {self.arch} must be one of {spec.objectives}, got {self.objective!r}")
        if spec.default_loss_on is not None:
            loss_on = self.loss_on or spec.default_loss_on
            if loss_on not in ("all", "targets"):
                raise ValueError(f"loss_on must be 'all' or 'targets', got {self.loss_on!r}")
            object.__setattr__(self, "loss_on", loss_on)
        elif self.loss_on is not None:
            raise ValueError(f"loss_on applies to decoder/prefix_lm only, not {self.arch}")
        if self.seq_len < 3:
            raise ValueError(f"seq_len must be >= 3, got {self.seq_len}")
        if spec.encoder_stack:
            enc_len = self.seq_len if self.enc_len is None else self.enc_len
            if enc_len < self.seq_len - 2:
                raise ValueError(f"enc_len {enc_len} must be >= seq_len - 2 = {self.seq_len - 2}")
            object.__setattr__(self, "enc_len", enc_len)
        if not 0 < self.mlm_rate < 1:
            raise ValueError(f"mlm_rate must be in (0, 1), got {self.mlm_rate!r}")
        if self.mlm_replacement not in MLM_REPLACEMENTS:
            raise ValueError(f"mlm_replacement must be one of {list(MLM_REPLACEMENTS)}, got {self.mlm_replacement!r}")
        if self.objective == "mlm" and (self.vocab_size is None or self.vocab_size <= vocab.N_SPECIAL):
            raise ValueError(f"objective 'mlm' needs vocab_size > {vocab.N_SPECIAL}, got {self.vocab_size!r}")

    @property
    def spec(self) -> ArchSpec:
        return arch_spec(self.arch)

    @property
    def needs_rng(self) -> bool:
        return self.objective in ("mlm", "span")

    # ---- per-example layouts -------------------------------------------------------------
    def _single_stack(self, ex: Example, rng) -> _Segment:
        x, y = ex.inputs, ex.targets
        n, m = x.size, y.size
        is_y = np.zeros(n + m + 1, np.float32)
        is_y[n + 1:] = 1.0  # positions n+1 .. n+m predict y_1 .. y_m
        if self.spec.autoregressive:  # decoder / prefix_lm (encdec has its own layout)
            tokens = np.concatenate([[vocab.BOS], x, [vocab.SEP], y])
            w = is_y if self.loss_on == "targets" else np.ones_like(is_y)
            prefix = np.arange(n + m + 1) < n + 2 if self.spec.prompt_is_prefix else None
            return _seg(tokens[:-1], tokens[1:], w, is_y, prefix)
        # encoder
        if self.objective == "task":
            inputs = np.concatenate([[vocab.BOS], x, [vocab.SEP], np.full(m, vocab.MASK)])
            targets = np.concatenate([np.zeros(n + 2), y])
            slots = np.concatenate([np.zeros(n + 2), np.ones(m)])
            return _seg(inputs, targets, slots, slots)
        tokens = np.concatenate([[vocab.BOS], x, [vocab.SEP], y]).astype(np.int32)
        cand = np.ones(tokens.size, bool)
        cand[[0, n + 1]] = False
        corrupted, chosen = mlm_corrupt(tokens, cand, rng, self.vocab_size, self.mlm_rate, self.mlm_replacement)
        return _seg(corrupted, np.where(chosen, tokens, 0), chosen, np.zeros(tokens.size))

    def _encdec(self, ex: Example, rng) -> tuple[np.ndarray, _Segment]:
        if self.objective == "task":
            enc, y, ev = ex.inputs, ex.targets, np.ones(ex.targets.size)
        else:
            enc, y = span_corrupt(np.concatenate([ex.inputs, ex.targets]), rng, self.noise_density, self.mean_span)
            ev = np.zeros(y.size)
        dec_in = np.concatenate([[vocab.BOS], y[:-1]])
        return np.asarray(enc, np.int32), _seg(dec_in, y, np.ones(y.size), ev)

    # ---- batch assembly ------------------------------------------------------------------
    def __call__(self, rows: Sequence[Sequence[Example]], batch_size: int | None = None,
                 rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """rows: B' <= B lists of Examples (one row each) -> dict of [B, T] (and [B, S]) arrays."""
        B = len(rows) if batch_size is None else batch_size
        if len(rows) > B:
            raise ValueError(f"{len(rows)} rows > batch_size {B}")
        if self.needs_rng and rng is None:
            raise ValueError(f"objective {self.objective!r} needs a seeded numpy Generator (rng=...)")
        T = self.seq_len
        out = {k: np.zeros((B, T), np.int32) for k in ("inputs", "targets", "segment_ids", "positions")}
        out["weights"] = np.zeros((B, T), np.float32)
        out["eval_weights"] = np.zeros((B, T), np.float32)
        spec = self.spec
        if spec.prompt_is_prefix:
            out["prefix_mask"] = np.zeros((B, T), bool)
        if spec.encoder_stack:
            S = self.enc_len
            for k in ("enc_inputs", "enc_segment_ids", "enc_positions"):
                out[k] = np.zeros((B, S), np.int32)
        for b, row in enumerate(rows):
            t = s = 0
            for k, ex in enumerate(row, start=1):
                if spec.encoder_stack:
                    enc, seg = self._encdec(ex, rng)
                    if s + enc.size > self.enc_len:
                        raise ValueError(f"row {b}: encoder tokens exceed enc_len {self.enc_len}")
                    out["enc_inputs"][b, s:s + enc.size] = enc
                    out["enc_segment_ids"][b, s:s + enc.size] = k
                    out["enc_positions"][b, s:s + enc.size] = np.arange(enc.size)
                    s += enc.size
                else:
                    seg = self._single_stack(ex, rng)
                L = seg.inputs.size
                if t + L > T:
                    raise ValueError(f"row {b}: {t + L} tokens exceed seq_len {T}; fit/pack examples first")
                sl = slice(t, t + L)
                out["inputs"][b, sl] = seg.inputs
                out["targets"][b, sl] = seg.targets
                out["weights"][b, sl] = seg.weights
                out["eval_weights"][b, sl] = seg.eval_weights
                out["segment_ids"][b, sl] = k
                out["positions"][b, sl] = np.arange(L)
                if spec.prompt_is_prefix:
                    out["prefix_mask"][b, sl] = seg.prefix
                t += L
        return out


def make_formatter(arch: str, seq_len: int, enc_len: int | None = None, **options) -> Formatter:
    """Build a Formatter; options: objective, loss_on, vocab_size, mlm_rate, mlm_replacement, noise_density,
    mean_span."""
    allowed = {"objective", "loss_on", "vocab_size", "mlm_rate", "mlm_replacement", "noise_density", "mean_span"}
    for key in options:
        if key not in allowed:
            raise ValueError(f"unknown formatter option {key!r} (allowed: {', '.join(sorted(allowed))})")
    return Formatter(arch=arch, seq_len=seq_len, enc_len=enc_len, **options)


def format_examples(formatter: Formatter, examples: Iterable[Example], batch_size: int, packing: bool = True,
                    rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """Pack ``examples`` (all must fit) into one batch; raises if they need more than B rows."""
    examples = list(examples)
    rows, used = pack_rows(examples, batch_size, formatter.seq_len, packing)
    if used != len(examples):
        raise ValueError(f"{len(examples)} examples need more than {batch_size} rows")
    return formatter(rows, batch_size, rng)
