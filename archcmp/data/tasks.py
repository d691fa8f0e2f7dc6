"""Tasks: deterministic, random-access streams of ``Example`` for (split, seed, index).

Every task implements
  ``size(split) -> int | None``   number of examples in one epoch (None: infinite stream)
  ``example(split, seed, index) -> Example``   the index-th example of that epoch's order
  ``examples(split, seed, start=0, limit=None)``   iterator over the above
and exposes ``name``, ``tokenizer``, ``max_tokens`` (max len(inputs)+len(targets)) and
``pack_by_default`` (short tasks pack several examples per row).

Registry: ``make_task(name, **params)``; unknown names or parameters raise ``ValueError`` naming
the offending key/value. Registered: addition, multiplication, modular, recall, induction, infill, shakespeare, and the
classification tasks of :mod:`archcmp.data.downstream` (sum_parity, greater, key_present).
"""
from __future__ import annotations

import hashlib
import inspect
from typing import Callable, Iterator, Sequence

import numpy as np

from archcmp.data import vocab
from archcmp.data.example import Example
from archcmp.data.tokenizers import ArithmeticTokenizer, CharTokenizer, Tokenizer

SPLITS = ("train", "validation", "test")
_SPLIT_CODE = {s: i for i, s in enumerate(SPLITS)}
HOLDOUT_FRACS = (0.90, 0.05, 0.05)  # train / validation / test share of the hashed item space
_MAX_TRIES = 100_000

_REGISTRY: dict[str, type] = {}


def register_task(name: str) -> Callable[[type], type]:
    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def make_task(name: str, **params) -> "Task":
    """Build a registered task; ValueError names the unknown task or parameter."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(task_names())})")
    cls = _REGISTRY[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in params:
        if key not in allowed:
            raise ValueError(f"{name}: unknown parameter {key!r} (allowed: {', '.join(allowed)})")
    return cls(**params)


def check_split(split: str) -> int:
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _SPLIT_CODE[split]


def bad_param(task: str, key: str, value, want: str) -> ValueError:
    return ValueError(f"{task}: parameter {key!r} must be {want}, got {value!r}")


def int_range(task: str, key: str, value, lo: int, hi: int) -> tuple[int, int]:
    """Accept an int or a [min, max] pair within [lo, hi]; return (min, max)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise bad_param(task, key, value, f"an int or a [min, max] pair of ints in [{lo}, {hi}]")
    if not lo <= pair[0] <= pair[1] <= hi:
        raise bad_param(task, key, value, f"within [{lo}, {hi}] with min <= max")
    return pair


def task_rng(tag: str, *ints: int) -> np.random.Generator:
    """Generator keyed by a task tag and non-negative ints (seed, split, index, ...)."""
    tag_int = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:4], "little")
    if any(int(i) < 0 for i in ints):
        raise ValueError(f"seeds and indices must be non-negative, got {ints}")
    return np.random.default_rng([tag_int, *[int(i) for i in ints]])


def hashed_split(salt: str, key: bytes) -> str:
    """Deterministic split of an item: blake2b(salt, key) -> uniform in [0,1) -> 90/5/5."""
    u = int.from_bytes(hashlib.blake2b(key, digest_size=8, person=salt.encode()[:16]).digest(), "little") / 2**64
    if u < HOLDOUT_FRACS[0]:
        return "train"
    return "validation" if u < HOLDOUT_FRACS[0] + HOLDOUT_FRACS[1] else "test"


class Task:
    """Base class; see module docstring for the interface."""

    name = "task"
    tokenizer: Tokenizer
    max_tokens: int
    pack_by_default = True

    def size(self, split: str) -> int | None:
        check_split(split)
        return None

    def example(self, split: str, seed: int, index: int) -> Example:
        raise NotImplementedError

    def examples(self, split: str, seed: int, start: int = 0, limit: int | None = None) -> Iterator[Example]:
        n = self.size(split)
        stop = n if limit is None else (start + limit if n is None else min(n, start + limit))
        i = start
        while stop is None or i < stop:
            yield self.example(split, seed, i)
            i += 1


class SampledTask(Task):
    """Infinite stream: example i draws items from rng(seed, split, i) until one hashes into the
    requested split, so train/validation/test are disjoint item sets for every seed."""

    def _draw(self, rng: np.random.Generator):  # -> (hash key bytes, Example)
        raise NotImplementedError

    def example(self, split: str, seed: int, index: int) -> Example:
        code = check_split(split)
        rng = task_rng(self.name, seed, code, index)
        for _ in range(_MAX_TRIES):
            key, ex = self._draw(rng)
            if hashed_split(self.name, key) == split:
                return ex
        raise RuntimeError(f"{self.name}: no item hashes into split {split!r}; widen the parameters")


class _ArithmeticTask(SampledTask):
    """a <op> b with operands of ``digits`` digits (int or [min, max]); targets = answer + EOS."""

    symbol = "+"

    def __init__(self, digits=3, reverse: bool = False):
        self.digits = int_range(self.name, "digits", digits, 1, 18)
        if not isinstance(reverse, bool):
            raise bad_param(self.name, "reverse", reverse, "a bool")
        self.reverse = reverse
        self.tokenizer = ArithmeticTokenizer()
        hi = self.digits[1]
        self.max_tokens = (2 * hi + 2) + (self._answer_digits(hi) + 1)

    def _answer_digits(self, d: int) -> int:
        raise NotImplementedError

    def _apply(self, a: int, b: int) -> int:
        raise NotImplementedError

    def _operand(self, rng) -> int:
        d = int(rng.integers(self.digits[0], self.digits[1] + 1))
        lo = 0 if d == 1 else 10 ** (d - 1)
        return int(rng.integers(lo, 10 ** d))

    def _draw(self, rng):
        a, b = self._operand(rng), self._operand(rng)
        key = f"{min(a, b)},{max(a, b)}".encode()  # commutative: (a,b) and (b,a) share a split
        return key, self.make_example(a, b)

    def make_example(self, a: int, b: int) -> Example:
        answer = str(self._apply(a, b))
        if self.reverse:
            answer = answer[::-1]
        x = self.tokenizer.encode(f"{a}{self.symbol}{b}=")
        y = np.append(self.tokenizer.encode(answer), vocab.EOS)
        return Example(x, y)


@register_task("addition")
class AdditionTask(_ArithmeticTask):
    """"a+b=" -> digits of a+b (reversed if ``reverse``) + EOS."""

    symbol = "+"

    def _answer_digits(self, d):
        return d + 1

    def _apply(self, a, b):
        return a + b


@register_task("multiplication")
class MultiplicationTask(_ArithmeticTask):
    """"a*b=" -> digits of a*b (reversed if ``reverse``) + EOS."""

    symbol = "*"

    def __init__(self, digits=2, reverse: bool = False):
        super().__init__(digits=digits, reverse=reverse)

    def _answer_digits(self, d):
        return 2 * d

    def _apply(self, a, b):
        return a * b


def residue_chars(p: int) -> list[str]:
    """One character per residue 0..p-1 (U+0100 + r), the 'symbols' tokens of the modular task.
    They sort after the four operator characters, so residue r is token id N_SPECIAL + 4 + r."""
    return [chr(0x100 + r) for r in range(p)]


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % q for q in range(2, int(p ** 0.5) + 1))


@register_task("modular")
class ModularTask(Task):
    """Grokking-style a∘b mod p over *all* pairs. "a∘b=" -> str(c) + EOS.

    ``op`` in {+,-,*,/}; '/' needs prime p and b != 0 (c = a * b^-1 mod p). Pairs are partitioned
    once by ``split_seed``: exactly ``round(train_frac * N)`` of the N pairs train, the rest halved
    into validation/test. One epoch = every pair of the split once, in an order fixed by the run seed.

    ``tokens='digits'`` (default) spells numbers in decimal digits ("12+7=" -> "19" EOS);
    ``tokens='symbols'`` gives every residue its own token, as Power et al. (2022) do: inputs
    ``a op b`` (3 tokens; the layouts' SEP plays '='), targets ``c`` EOS.
    """

    def __init__(self, p: int = 97, op: str = "+", train_frac: float = 0.5, split_seed: int = 0,
                 tokens: str = "digits"):
        if not isinstance(p, (int, np.integer)) or isinstance(p, bool) or not 2 <= p <= 1000:
            raise bad_param("modular", "p", p, "an int in [2, 1000]")
        if op not in ("+", "-", "*", "/"):
            raise bad_param("modular", "op", op, "one of '+', '-', '*', '/'")
        if op == "/" and not _is_prime(int(p)):
            raise bad_param("modular", "p", p, "prime when op is '/'")
        if not isinstance(train_frac, (float, int)) or not 0.0 < float(train_frac) < 1.0:
            raise bad_param("modular", "train_frac", train_frac, "a float in (0, 1)")
        if not isinstance(split_seed, (int, np.integer)) or isinstance(split_seed, bool) or split_seed < 0:
            raise bad_param("modular", "split_seed", split_seed, "a non-negative int")
        if tokens not in ("digits", "symbols"):
            raise bad_param("modular", "tokens", tokens, "'digits' or 'symbols'")
        self.p, self.op, self.train_frac, self.split_seed = int(p), op, float(train_frac), int(split_seed)
        self.tokens = tokens
        if tokens == "symbols":
            self.tokenizer = CharTokenizer(residue_chars(self.p) + ["+", "-", "*", "/"])
            self.max_tokens = 3 + 2
        else:
            self.tokenizer = ArithmeticTokenizer()
            nd = len(str(self.p - 1))
            self.max_tokens = (2 * nd + 2) + (nd + 1)
        b_lo = 1 if op == "/" else 0
        a, b = np.meshgrid(np.arange(self.p), np.arange(b_lo, self.p), indexing="ij")
        pairs = np.stack([a.ravel(), b.ravel()], axis=1)  # [N, 2]
        perm = task_rng("modular-split", self.split_seed, self.p).permutation(len(pairs))
        n_train = int(round(self.train_frac * len(pairs)))
        n_val = (len(pairs) - n_train + 1) // 2
        self._pairs = {
            "train": pairs[np.sort(perm[:n_train])],
            "validation": pairs[np.sort(perm[n_train:n_train + n_val])],
            "test": pairs[np.sort(perm[n_train + n_val:])],
        }
        self._order_cache: dict[tuple[str, int], np.ndarray] = {}

    def answer(self, a: int, b: int) -> int:
        p = self.p
        if self.op == "+":
            return (a + b) % p
        if self.op == "-":
            return (a - b) % p
        if self.op == "*":
            return (a * b) % p
        return (a * pow(b, p - 2, p)) % p

    def pairs(self, split: str) -> np.ndarray:
        check_split(split)
        return self._pairs[split]

    def size(self, split):
        return len(self.pairs(split))

    def example(self, split, seed, index):
        key = (split, int(seed))
        if key not in self._order_cache:
            if len(self._order_cache) > 8:
                self._order_cache.clear()
            self._order_cache[key] = task_rng("modular-order", seed, check_split(split)).permutation(self.size(split))
        order = self._order_cache[key]
        if not 0 <= index < len(order):
            raise IndexError(f"modular: index {index} outside epoch of {len(order)} examples")
        a, b = (int(v) for v in self._pairs[split][order[index]])
        if self.tokens == "symbols":
            sym = residue_chars(self.p)
            x = self.tokenizer.encode(f"{sym[a]}{self.op}{sym[b]}")
            y = np.append(self.tokenizer.encode(sym[self.answer(a, b)]), vocab.EOS)
        else:
            x = self.tokenizer.encode(f"{a}{self.op}{b}=")
            y = np.append(self.tokenizer.encode(str(self.answer(a, b))), vocab.EOS)
        return Example(x, y)


@register_task("recall")
class RecallTask(SampledTask):
    """Few-shot associative recall; accuracy is governed by the number of shots k.

    Each sequence draws a fresh mapping from ``n_keys`` distinct letters to digit values
    (< ``n_values``). It shows k = ``shots`` (int or [min, max]) demonstrations ``key:value``, each
    key sampled uniformly with replacement, then queries one key:
        inputs  "c:7,a:3,c:7;a="      targets  "3" EOS
    With ``query='any'`` the query key is uniform over the mapping, so it was demonstrated with
    probability 1-(1-1/n_keys)^k and the best possible accuracy is that plus the unseen remainder
    divided by n_values: the accuracy-vs-k curve has a known ceiling. ``query='seen'`` always asks
    a demonstrated key (pure in-context copying). Splits are disjoint by hashing the sequence.
    """

    def __init__(self, shots=4, n_keys: int = 8, n_values: int = 10, query: str = "any"):
        self.shots = int_range("recall", "shots", shots, 1, 256)
        if not isinstance(n_keys, (int, np.integer)) or not 2 <= n_keys <= 26:
            raise bad_param("recall", "n_keys", n_keys, "an int in [2, 26]")
        if not isinstance(n_values, (int, np.integer)) or not 2 <= n_values <= 10:
            raise bad_param("recall", "n_values", n_values, "an int in [2, 10]")
        if query not in ("any", "seen"):
            raise bad_param("recall", "query", query, "'any' or 'seen'")
        self.n_keys, self.n_values, self.query = int(n_keys), int(n_values), query
        self.tokenizer = ArithmeticTokenizer()
        self.max_tokens = 4 * self.shots[1] + 2 + 2

    def _draw(self, rng):
        k = int(rng.integers(self.shots[0], self.shots[1] + 1))
        keys = rng.choice(26, size=self.n_keys, replace=False)
        values = rng.integers(0, self.n_values, size=self.n_keys)
        shown = rng.integers(0, self.n_keys, size=k)
        q = int(rng.choice(shown)) if self.query == "seen" else int(rng.integers(0, self.n_keys))
        letter = lambda i: chr(ord("a") + int(keys[i]))
        text = ",".join(f"{letter(i)}:{values[i]}" for i in shown) + f";{letter(q)}="
        x = self.tokenizer.encode(text)
        y = np.array([self.tokenizer.id_of(str(values[q])), vocab.EOS], np.int32)
        return x.tobytes() + y.tobytes(), Example(x, y)


@register_task("induction")
class InductionTask(SampledTask):
    """A random segment and its repeat: the in-context copying task of induction heads.

    Each example draws a segment x of L tokens (L uniform in ``length``, an int or [min, max]),
    i.i.d. uniform over the first ``n_symbols`` letters a..z. ``prompt='none'`` (default): no
    inputs, targets = x x EOS (decoder layout ``BOS SEP x x EOS``: nothing marks where the repeat
    starts, so a model can only predict it by finding the current token's earlier occurrence and
    copying what followed: an induction head). ``prompt='first'``: inputs = x, targets = x EOS
    (``BOS x SEP x EOS``; the SEP marks the repeat's start, which a positional rule relative to it
    can exploit; pilots did). The first occurrence is unpredictable (ln n_symbols nats per token at
    best); the repeat's loss falls to ~0 once the model copies from its context. Varying L keeps a
    fixed-offset rule from working. Splits are disjoint by hashing the segment.

    ``tokens='letters'`` (default) draws from the letters a..z of the arithmetic alphabet
    (``n_symbols`` <= 26); ``tokens='symbols'`` from ``n_symbols`` (<= 1024) abstract symbols with
    ids ``N_SPECIAL + r`` and nothing else in the vocabulary (a larger alphabet makes guessing among
    the tokens already seen worth less against copying the right one).

    ``filler=F`` (default 0, ``prompt='none'`` only): F more random symbols around the pair, r of
    them before it (r uniform in 0..F) and F - r after: targets = ``f x x f' EOS``. Without filler
    every repeat starts at the same place relative to the row start (position 2 + L), so a model with
    absolute positions can find the earlier occurrence by position arithmetic instead of by content;
    the random offset removes that route. :meth:`repeat_span` locates the pair in an example.

    ``layout='pairs'`` (``prompt='none'`` only; ``length`` unused): trigger -> answer pairs scattered
    through random filler, fresh per example. K = ``pairs`` distinct trigger symbols are drawn, each
    with an answer drawn from the other symbols; each pair (trigger followed by its answer) is placed
    at ``occurrences`` random non-overlapping places among ``filler`` random symbols that are never a
    trigger: targets = ``body EOS`` with 2 K occurrences + filler body tokens. An answer's first
    occurrence is unpredictable; every later one is predicted exactly by finding the trigger's
    earlier occurrence and copying the token after it (a previous-token head feeding an induction
    head). The tokens before a trigger are random, so no look-back other than the previous token
    and no position rule helps (the segment layout leaves a strided look-back and positions open).
    :meth:`scored_targets` gives the first and the later answers' positions.
    """

    def __init__(self, length=(8, 24), n_symbols: int = 26, prompt: str = "none", tokens: str = "letters",
                 filler: int = 0, layout: str = "segment", pairs: int = 6, occurrences: int = 3):
        self.length = int_range("induction", "length", length, 2, 256)
        if layout not in ("segment", "pairs"):
            raise bad_param("induction", "layout", layout, "'segment' or 'pairs'")
        for key, value, lo, hi in (("pairs", pairs, 1, 256), ("occurrences", occurrences, 2, 64)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not lo <= value <= hi:
                raise bad_param("induction", key, value, f"an int in [{lo}, {hi}]")
        if layout == "pairs" and prompt != "none":
            raise bad_param("induction", "layout", layout, "'segment' with prompt='first'")
        if layout == "pairs" and not pairs + 2 <= n_symbols:
            raise bad_param("induction", "pairs", pairs, f"at most n_symbols - 2 = {n_symbols - 2}")
        self.layout, self.pairs, self.occurrences = layout, int(pairs), int(occurrences)
        if tokens not in ("letters", "symbols"):
            raise bad_param("induction", "tokens", tokens, "'letters' or 'symbols'")
        most = 26 if tokens == "letters" else 1024
        if not isinstance(n_symbols, (int, np.integer)) or isinstance(n_symbols, bool) or not 2 <= n_symbols <= most:
            raise bad_param("induction", "n_symbols", n_symbols, f"an int in [2, {most}] with tokens={tokens!r}")
        if prompt not in ("none", "first"):
            raise bad_param("induction", "prompt", prompt, "'none' or 'first'")
        if not isinstance(filler, (int, np.integer)) or isinstance(filler, bool) or not 0 <= filler <= 512:
            raise bad_param("induction", "filler", filler, "an int in [0, 512]")
        if filler and prompt != "none":
            raise bad_param("induction", "filler", filler, "0 with prompt='first'")
        self.n_symbols, self.prompt, self.tokens, self.filler = int(n_symbols), prompt, tokens, int(filler)
        if tokens == "letters":
            self._chars = [chr(ord("a") + i) for i in range(self.n_symbols)]
            self.tokenizer = ArithmeticTokenizer()
        else:
            self._chars = residue_chars(self.n_symbols)
            self.tokenizer = CharTokenizer(self._chars)
        if layout == "pairs":
            self.max_tokens = 2 * self.pairs * self.occurrences + self.filler + 1
        else:
            self.max_tokens = 2 * self.length[1] + 1 + self.filler

    def _encode(self, idx) -> np.ndarray:
        return self.tokenizer.encode("".join(self._chars[int(i)] for i in idx))

    def _symbols(self, rng, n: int) -> np.ndarray:
        return self._encode(rng.integers(0, self.n_symbols, size=n))

    def _draw_pairs(self, rng):
        k, n = self.pairs, self.occurrences
        perm = rng.permutation(self.n_symbols)
        triggers, others = perm[:k], perm[k:]
        answers = rng.choice(others, size=k)
        body = rng.choice(others, size=2 * k * n + self.filler)  # filler everywhere, pairs written over it
        # k*n slots of two tokens at random non-overlapping places: sorted gaps taken from the filler
        starts = np.sort(rng.integers(0, self.filler + 1, size=k * n)) + 2 * np.arange(k * n)
        which = rng.permutation(np.repeat(np.arange(k), n))  # the pair at each slot
        body[starts], body[starts + 1] = triggers[which], answers[which]
        targets = np.append(self._encode(body), vocab.EOS).astype(np.int32)
        return targets.tobytes(), Example(targets[:0], targets)

    def _draw(self, rng):
        if self.layout == "pairs":
            return self._draw_pairs(rng)
        n = int(rng.integers(self.length[0], self.length[1] + 1))
        x = self._symbols(rng, n)
        if self.prompt == "first":
            return x.tobytes(), Example(x, np.append(x, vocab.EOS).astype(np.int32))
        if not self.filler:
            return x.tobytes(), Example(x[:0], np.concatenate([x, x, [vocab.EOS]]).astype(np.int32))
        before = int(rng.integers(0, self.filler + 1))
        f = self._symbols(rng, self.filler)
        body = np.concatenate([f[:before], x, x, f[before:], [vocab.EOS]]).astype(np.int32)
        return body.tobytes(), Example(x[:0], body)

    def repeat_span(self, ex: Example) -> tuple[int, int]:
        """(start, L): the first occurrence is ``ex.targets[start:start+L]``, its repeat the next L
        targets (``prompt='first'``: the inputs, start 0). With filler, the earliest offset at which
        the L targets repeat (the drawn one unless the filler happens to repeat too)."""
        if self.prompt == "first":
            return 0, len(ex.inputs)
        n = (len(ex.targets) - 1 - self.filler) // 2
        t = ex.targets
        for start in range(self.filler + 1):
            if np.array_equal(t[start:start + n], t[start + n:start + 2 * n]):
                return start, n
        raise ValueError(f"induction: no repeated segment of length {n} in {t.tolist()}")

    def scored_targets(self, ex: Example) -> tuple[np.ndarray, np.ndarray]:
        """(first, repeat): indices into ``ex.targets`` of the tokens whose loss the analysis reads.
        ``repeat``: tokens predictable only from the context (segment layout: repeat tokens 2..L;
        pairs layout: the answers after a trigger's 2nd..n-th occurrence); ``first``: their first
        occurrence (segment tokens 2..L; each pair's first answer), unpredictable.

        Pairs are found from the tokens: a trigger is a symbol that occurs exactly ``occurrences``
        times, never last, followed each time by the same token (a run of filler that happens to
        behave so is scored as a pair: it is just as predictable)."""
        if self.layout == "segment":
            if self.prompt == "first":
                raise ValueError("induction: scored_targets reads the prompt='none' layout")
            at, n = self.repeat_span(ex)
            return np.arange(at + 1, at + n), np.arange(at + n + 1, at + 2 * n)
        body = ex.targets[:-1]
        first, repeat = [], []
        for sym in np.unique(body):
            at = np.flatnonzero(body == sym)
            if len(at) == self.occurrences and at[-1] + 1 < len(body) and len(set(body[at + 1].tolist())) == 1:
                first.append(at[0] + 1)
                repeat.extend(at[1:] + 1)
        return np.sort(np.array(first, int)), np.sort(np.array(repeat, int))


@register_task("infill")
class InfillTask(SampledTask):
    """Fill a span missing from the middle; the answer depends on both sides.

    Each example draws a left and a right side of ``side`` random digits and a span of ``span``
    digits (``span`` <= ``side``) between them, span digit i = (left[side-span+i] + right[i]) mod 10:
    each missing digit is the sum of the digit just left of the hole and its mirror just right of it,
    so neither side alone predicts it (one side alone: chance, 1/10 per digit).

    ``context='both'`` (default): inputs = ``left ?..? right`` (one ``?`` per missing digit),
    targets = span EOS. Every architecture then reads both sides in its own layout: the encoder and
    prefix-LM bidirectionally, the encoder-decoder in its encoder, the decoder re-ordered (prefix and
    suffix first, the middle generated after them: the fill-in-the-middle layout).
    ``context='left'``: inputs = ``left ?..?`` only, the right side withheld: what a decoder sees
    generating strictly left to right (the ceiling is chance). Splits are disjoint by hashing
    (left, right).
    """

    def __init__(self, side: int = 4, span: int = 2, context: str = "both"):
        for key, value, lo, hi in (("side", side, 1, 64), ("span", span, 1, 64)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not lo <= value <= hi:
                raise bad_param("infill", key, value, f"an int in [{lo}, {hi}]")
        if span > side:
            raise bad_param("infill", "span", span, f"at most side={side}")
        if context not in ("both", "left"):
            raise bad_param("infill", "context", context, "'both' or 'left'")
        self.side, self.span, self.context = int(side), int(span), context
        self.tokenizer = ArithmeticTokenizer()
        self.max_tokens = 2 * self.side + 2 * self.span + 1

    def answer(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """The missing digits of sides ``left`` and ``right`` (int arrays of digits)."""
        return (left[self.side - self.span:] + right[:self.span]) % 10

    def _draw(self, rng):
        left, right = rng.integers(0, 10, size=self.side), rng.integers(0, 10, size=self.side)
        digits = lambda a: "".join(str(int(d)) for d in a)  # noqa: E731
        hole = "?" * self.span
        text = digits(left) + hole + (digits(right) if self.context == "both" else "")
        x = self.tokenizer.encode(text)
        y = np.append(self.tokenizer.encode(digits(self.answer(left, right))), vocab.EOS).astype(np.int32)
        return left.astype(np.int8).tobytes() + right.astype(np.int8).tobytes(), Example(x, y)


