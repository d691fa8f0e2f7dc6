"""A sentence-classification task on Shakespeare's plays: which play, or which speaker, said a line.

``task=shakespeare_speech`` (a downstream task for fine-tuning, like :mod:`archcmp.data.downstream`)
reads the shipped texts of :mod:`archcmp.data.shakespeare` (no other data) and cuts every play into
speeches: a paragraph whose first line is a speaker tag (``Ham.``, ``LADY MACBETH.``) followed by
the spoken lines. An example is the start of one speech (its lines joined by spaces, cut to
``max_chars`` characters, at least ``min_chars``) and its label:

  ``label=play``     which of ``plays`` the speech comes from (one class per play)
  ``label=speaker``  which of the ``n_classes`` most frequent speakers of ``play`` speaks it

Labels are the letters ``A``, ``B``, ... (one token each; class i is ``labels[i]``, listed in
``classes``). The tokenizer is the char tokenizer of ``task=shakespeare`` (fitted on its train
works), so a model pre-trained on the complete works reads these examples with its own ids.

Splits: deterministic and per work -- every speech of a work is assigned to train / validation /
test by hashing (work, speech number), 70/15/15 (a play has only some hundreds of speeches, so the
held-out shares are larger than the 5% of the sampled tasks), so each play contributes to every
split and the splits never share a speech. (Holding out whole works, as ``task=shakespeare`` does, is impossible
here: the play, and the speakers who belong to it, are the label.) Training examples draw the
class first, uniformly, then a speech of that class (balanced in expectation); validation and test
are finite: every speech of the split once, in a seed-fixed order.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archcmp.data import shakespeare, vocab
from archcmp.data.downstream import ClassifyTask
from archcmp.data.example import Example
from archcmp.data.tasks import bad_param, check_split, register_task, task_rng
from archcmp.data.text_tasks import char_tokenizer
from archcmp.data.tokenizers import default_cache_dir

# a speaker tag, alone on its line: a capitalised name of up to four words ending in a full stop
# (``Ham.``, ``LADY MACBETH.``), or a name in capitals without one (``HERMIA``, as some files write it)
_TAG = re.compile(r"[A-Z][A-Za-z']*(?: [A-Za-z'&]+){0,3}\.|[A-Z][A-Z']*(?: [A-Z'&]+){0,3}")
_NOT_SPEAKERS = {"Enter", "Exit", "Exeunt", "Re-enter", "Manet", "Flourish", "Alarum", "Alarums", "Sennet",
                 "SCENE", "Scene", "ACT", "Act", "Finis", "FINIS", "THE", "The"}
DEFAULT_PLAYS = ("hamlet", "macbeth", "midsummer_nights_dream", "twelfth_night")


SPLIT_FRACS = (0.70, 0.15, 0.15)  # train / validation / test share of the speeches


def split_of(key: str) -> str:
    """The split of a speech, from the sha256 of its key ``work:number`` (deterministic)."""
    u = int.from_bytes(hashlib.sha256(b"shakespeare_speech:" + key.encode()).digest()[:8], "big") / 2 ** 64
    return "train" if u < SPLIT_FRACS[0] else "validation" if u < SPLIT_FRACS[0] + SPLIT_FRACS[1] else "test"


@dataclass(frozen=True)
class Speech:
    """One speech of a play: its work, its number in the play, the speaker's tag and the text."""

    work: str
    number: int
    speaker: str
    text: str


def speeches(text: str, work: str) -> list[Speech]:
    """The speeches of a play's text, in order: paragraphs (blank-line separated) of >= 2 lines whose
    first line is a speaker tag; the spoken lines are stripped and joined by single spaces."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in para.strip("\n").split("\n")]
        if len(lines) < 2 or not _TAG.fullmatch(lines[0]) or lines[0].split()[0].rstrip(".") in _NOT_SPEAKERS:
            continue
        spoken = " ".join(ln for ln in lines[1:] if ln)
        if spoken:
            out.append(Speech(work, len(out), lines[0].rstrip("."), spoken))
    return out


@register_task("shakespeare_speech")
class ShakespeareSpeechTask(ClassifyTask):
    """Which play / which speaker (module docstring). Params: ``label`` 'play' | 'speaker';
    ``plays`` (label=play: the works, >= 2); ``play`` and ``n_classes`` (label=speaker);
    ``max_chars`` / ``min_chars`` (the text kept of a speech; shorter speeches are skipped);
    ``cache_dir``."""

    def __init__(self, label: str = "play", plays=DEFAULT_PLAYS, play: str = "hamlet", n_classes: int = 4,
                 max_chars: int = 40, min_chars: int = 12, cache_dir: str | None = None):
        if label not in ("play", "speaker"):
            raise bad_param("shakespeare_speech", "label", label, "'play' or 'speaker'")
        for key, v, lo, hi in (("n_classes", n_classes, 2, 26), ("max_chars", max_chars, 1, 10_000),
                               ("min_chars", min_chars, 1, 10_000)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not lo <= v <= hi:
                raise bad_param("shakespeare_speech", key, v, f"an int in [{lo}, {hi}]")
        if min_chars > max_chars:
            raise bad_param("shakespeare_speech", "min_chars", min_chars, f"an int <= max_chars={max_chars}")
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        splits = shakespeare.load_splits(cache)
        works = {n: t for part in splits.values() for n, t in part.items()}
        wanted = list(plays) if label == "play" else [play]
        for w in wanted:
            if w not in works:
                key = "plays" if label == "play" else "play"
                raise bad_param("shakespeare_speech", key, w, f"a play of the shipped texts, e.g. {sorted(works)[:4]}")
        if label == "play" and (len(wanted) < 2 or len(set(wanted)) != len(wanted) or len(wanted) > 26):
            raise bad_param("shakespeare_speech", "plays", list(plays), "2 to 26 distinct plays")
        pool = [sp for w in wanted for sp in speeches(works[w], w) if len(sp.text) >= min_chars]
        if label == "play":
            classes = wanted
        else:
            counts: dict[str, int] = {}
            for sp in pool:
                counts[sp.speaker] = counts.get(sp.speaker, 0) + 1
            classes = sorted(counts, key=lambda k: (-counts[k], k))[:int(n_classes)]
            if len(classes) < 2:
                raise bad_param("shakespeare_speech", "play", play, "a play with >= 2 speakers")
        self.label, self.classes = label, tuple(classes)
        self.labels = tuple(chr(ord("A") + i) for i in range(len(classes)))
        self.tokenizer = char_tokenizer(splits)
        self.label_ids = np.array([self._one_id(c) for c in self.labels], np.int32)
        self.max_chars = int(max_chars)
        self.max_tokens = self.max_chars + 2
        index = {c: i for i, c in enumerate(classes)}
        which = (lambda sp: sp.work) if label == "play" else (lambda sp: sp.speaker)  # noqa: E731
        self._items: dict[str, list[list[Speech]]] = {s: [[] for _ in classes] for s in ("train", "validation", "test")}
        for sp in pool:
            c = index.get(which(sp))
            if c is not None:
                self._items[split_of(f"{sp.work}:{sp.number}")][c].append(sp)
        for split, per_class in self._items.items():
            if any(not group for group in per_class):
                raise bad_param("shakespeare_speech", "plays" if label == "play" else "n_classes",
                                list(plays) if label == "play" else n_classes, f"classes with speeches in every split "
                                f"(split {split!r} has none of {[c for c, g in zip(classes, per_class) if not g]})")
        self._order: dict[tuple[str, int], list[tuple[int, Speech]]] = {}

    def _one_id(self, ch: str) -> int:
        ids = self.tokenizer.encode(ch)
        if len(ids) != 1:
            raise ValueError(f"shakespeare_speech: label {ch!r} is not one token of the char tokenizer")
        return int(ids[0])

    def example_of(self, speech: Speech, label: int) -> Example:
        """The Example of one speech with class index ``label``."""
        x = self.tokenizer.encode(speech.text[:self.max_chars])
        return Example(np.asarray(x, np.int32), np.array([self.label_ids[label], vocab.EOS], np.int32))

    def speeches_of(self, split: str) -> list[tuple[int, Speech]]:
        """(class index, speech) of every speech in ``split``, grouped by class."""
        return [(c, sp) for c, group in enumerate(self._items[split]) for sp in group]

    def size(self, split):
        check_split(split)
        return None if split == "train" else len(self.speeches_of(split))

    def example(self, split, seed, index):
        code = check_split(split)
        if split == "train":
            rng = task_rng(self.name + "-" + self.label, seed, code, index)
            c = int(rng.integers(0, self.num_classes))
            group = self._items["train"][c]
            return self.example_of(group[int(rng.integers(0, len(group)))], c)
        key = (split, int(seed))
        if key not in self._order:
            items = self.speeches_of(split)
            perm = task_rng(self.name + "-order", seed, code).permutation(len(items))
            self._order[key] = [items[int(i)] for i in perm]
        order = self._order[key]
        if not 0 <= index < len(order):
            raise IndexError(f"{self.name}: index {index} outside the {split} split of {len(order)} speeches")
        c, sp = order[index]
        return self.example_of(sp, c)
