"""Tasks solved by reading the context: few-shot associative ``recall``, ``induction`` (a random
segment and its repeat) and ``infill`` (a missing middle span that depends on both sides).
"""
from __future__ import annotations

import numpy as np

from archcmp.data import vocab
from archcmp.data.arithmetic_tasks import residue_chars
from archcmp.data.example import Example
from archcmp.data.tasks import SampledTask, bad_param, int_range, register_task
from archcmp.data.tokenizers import ArithmeticTokenizer, CharTokenizer


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
