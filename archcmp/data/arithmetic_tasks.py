"""Arithmetic tasks: ``addition`` and ``multiplication`` of n-digit numbers, and ``modular``
arithmetic (a op b mod p) over a fixed table split by a hash of the operands (the grokking setting).
"""
from __future__ import annotations

import numpy as np

from archcmp.data import vocab
from archcmp.data.example import Example
from archcmp.data.tasks import SampledTask, Task, bad_param, check_split, int_range, register_task, task_rng
from archcmp.data.tokenizers import ArithmeticTokenizer, CharTokenizer


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
