"""Downstream classification tasks for fine-tuning (``finetune.from=RUN``): one label per example.

Every task here is an ordinary task (``Example(inputs=x, targets=[label, EOS])``, splits disjoint by
hashing the item, the same examples for every architecture and fingerprinted like any other task),
plus the class structure a classifier head needs:

  ``labels``          the label strings, one token each ("0", "1"): class i is ``labels[i]``
  ``label_ids``       their token ids (the target a generative head must produce)
  ``label_of(ex)``    the class index of an example (from its first target token)

Each label is drawn first (uniform over the classes), then an item with that label, so the classes
are balanced in expectation and the majority-class baseline is about 1/#classes (the analysis uses
the exact share of the evaluated examples). They use the arithmetic tokenizer, so a model
pre-trained on ``addition`` or ``recall`` reads them with the embeddings it learned.

| task           | inputs          | label                                             |
|----------------|-----------------|---------------------------------------------------|
| sum_parity     | ``a+b=``        | 1 if a+b is even, else 0                          |
| greater        | ``a>b?``        | 1 if a > b (same number of digits), else 0         |
| key_present    | ``c:7,a:3;b?``  | 1 if the queried key was among the shown keys     |
"""
from __future__ import annotations

import numpy as np

from archcmp.data import vocab
from archcmp.data.example import Example
from archcmp.data.tasks import SampledTask, bad_param, int_range, register_task
from archcmp.data.tokenizers import ArithmeticTokenizer

_MAX_LABEL_TRIES = 10_000


class ClassifyTask(SampledTask):
    """A sampled task with a label per example; subclasses draw ``(key, text)`` for a given label."""

    labels: tuple[str, ...] = ("0", "1")

    def __init__(self):
        self.tokenizer = ArithmeticTokenizer()
        self.label_ids = np.array([self.tokenizer.id_of(c) for c in self.labels], np.int32)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def label_of(self, ex: Example) -> int:
        """The class index of ``ex`` (its first target token among ``label_ids``)."""
        hits = np.flatnonzero(self.label_ids == int(ex.targets[0]))
        if hits.size != 1:
            raise ValueError(f"{self.name}: example target {ex.targets.tolist()} is not one of the labels {self.labels}")
        return int(hits[0])

    def _item(self, rng: np.random.Generator) -> tuple[bytes, str, int]:
        """One random item: (hash key, input text, its label index)."""
        raise NotImplementedError

    def _draw(self, rng):
        want = int(rng.integers(0, self.num_classes))
        for _ in range(_MAX_LABEL_TRIES):
            key, text, label = self._item(rng)
            if label == want:
                x = self.tokenizer.encode(text)
                return key, Example(x, np.array([self.label_ids[label], vocab.EOS], np.int32))
        raise RuntimeError(f"{self.name}: no item with label {self.labels[want]!r}; widen the parameters")


def _number(rng: np.random.Generator, digits: tuple[int, int]) -> int:
    d = int(rng.integers(digits[0], digits[1] + 1))
    return int(rng.integers(0 if d == 1 else 10 ** (d - 1), 10 ** d))


@register_task("sum_parity")
class SumParityTask(ClassifyTask):
    """``a+b=`` -> 1 if a+b is even, else 0 (operands of ``digits`` digits, an int or [min, max])."""

    def __init__(self, digits=(1, 3)):
        super().__init__()
        self.digits = int_range("sum_parity", "digits", digits, 1, 18)
        self.max_tokens = 2 * self.digits[1] + 2 + 2

    def _item(self, rng):
        a, b = _number(rng, self.digits), _number(rng, self.digits)
        return f"{min(a, b)},{max(a, b)}".encode(), f"{a}+{b}=", int((a + b) % 2 == 0)


@register_task("greater")
class GreaterTask(ClassifyTask):
    """``a>b?`` -> 1 if a > b, else 0; a and b have the same number of digits (from ``digits``), so
    the answer is decided by the first digit where they differ, anywhere in the two numbers."""

    def __init__(self, digits=(2, 4)):
        super().__init__()
        self.digits = int_range("greater", "digits", digits, 1, 18)
        self.max_tokens = 2 * self.digits[1] + 2 + 2

    def _item(self, rng):
        d = int(rng.integers(self.digits[0], self.digits[1] + 1))
        a, b = _number(rng, (d, d)), _number(rng, (d, d))
        return f"{a},{b}".encode(), f"{a}>{b}?", int(a > b)


@register_task("key_present")
class KeyPresentTask(ClassifyTask):
    """``c:7,a:3,c:7;b?`` -> 1 if the queried key was among the ``shots`` shown ``key:value`` pairs
    (keys from a fresh random set of ``n_keys`` letters per example), else 0."""

    def __init__(self, shots=(2, 6), n_keys: int = 8):
        super().__init__()
        self.shots = int_range("key_present", "shots", shots, 1, 64)
        if not isinstance(n_keys, (int, np.integer)) or isinstance(n_keys, bool) or not 2 <= n_keys <= 26:
            raise bad_param("key_present", "n_keys", n_keys, "an int in [2, 26]")
        self.n_keys = int(n_keys)
        self.max_tokens = 4 * self.shots[1] + 2 + 2

    def _item(self, rng):
        k = int(rng.integers(self.shots[0], self.shots[1] + 1))
        keys = rng.choice(26, size=self.n_keys, replace=False)
        shown = rng.integers(0, self.n_keys, size=k)
        values = rng.integers(0, 10, size=k)
        q = int(rng.integers(0, self.n_keys))
        letter = lambda i: chr(ord("a") + int(keys[i]))  # noqa: E731
        text = ",".join(f"{letter(i)}:{v}" for i, v in zip(shown, values)) + f";{letter(q)}?"
        return text.encode(), text, int(q in set(shown.tolist()))
