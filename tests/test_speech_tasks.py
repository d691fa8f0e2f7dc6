"""task=shakespeare_speech (archcmp.data.speech_tasks): which play / which speaker said a line."""
from __future__ import annotations

import numpy as np
import pytest

from archcmp.data import make_task, shakespeare
from archcmp.data.tasks import SPLITS


@pytest.fixture(scope="module")
def works():
    splits = shakespeare.load_splits()
    return {n: t for part in splits.values() for n, t in part.items()}


def _speaker_paragraphs(text: str) -> list[tuple[str, str]]:
    """(first line, the other lines stripped and joined by spaces) of every blank-line paragraph:
    written here independently of the task's parser."""
    out = []
    for para in text.replace("\r\n", "\n").split("\n\n"):
        lines = [ln.strip() for ln in para.strip("\n").split("\n")]
        if len(lines) >= 2:
            out.append((lines[0], " ".join(ln for ln in lines[1:] if ln)))
    return out


@pytest.mark.parametrize("params", [{"label": "play"}, {"label": "speaker", "play": "othello", "n_classes": 3}])
def test_labels_recomputed_from_the_play_text(works, params):
    task = make_task("shakespeare_speech", **params)
    assert len(task.labels) == len(task.classes) == (4 if params["label"] == "play" else 3)
    assert [task.tokenizer.decode([int(i)]) for i in task.label_ids] == list("ABCD"[:task.num_classes])
    held = list(task.examples("validation", 0))
    assert len(held) == task.size("validation") > 40
    for ex in held[:60]:
        c = task.label_of(ex)
        play = task.classes[c] if params["label"] == "play" else params["play"]
        found = [tag for tag, body in _speaker_paragraphs(works[play])
                 if np.array_equal(task.tokenizer.encode(body[:task.max_chars]), ex.inputs)]
        assert found, f"{task.tokenizer.decode(ex.inputs)!r} is not the start of a speech in {play}"
        if params["label"] == "speaker":
            assert task.classes[c] in [tag.rstrip(".") for tag in found]


def test_splits_are_disjoint_deterministic_per_work_and_hold_every_class():
    task = make_task("shakespeare_speech")
    seen = {}
    for split in SPLITS:
        items = task.speeches_of(split)
        keys = {(sp.work, sp.number) for _, sp in items}
        assert len(keys) == len(items)
        seen[split] = keys
        for c, play in enumerate(task.classes):  # every play in every split, the play is the class
            assert any(cc == c and sp.work == play for cc, sp in items)
    assert not (seen["train"] & seen["validation"]) and not (seen["train"] & seen["test"])
    assert not (seen["validation"] & seen["test"])
    n = sum(len(v) for v in seen.values())
    assert 0.66 < len(seen["train"]) / n < 0.74
    again = make_task("shakespeare_speech")  # a fresh instance: the same examples, in the same order
    for split, seed in (("validation", 0), ("train", 3)):
        a = [task.example(split, seed, i) for i in range(30)]
        b = [again.example(split, seed, i) for i in range(30)]
        assert all(np.array_equal(x.inputs, y.inputs) and np.array_equal(x.targets, y.targets) for x, y in zip(a, b))
    other_seed = [task.example("validation", 1, i) for i in range(30)]
    assert any(not np.array_equal(x.inputs, y.inputs) for x, y in zip(a, other_seed))


def test_train_classes_are_balanced_and_examples_fit():
    task = make_task("shakespeare_speech")
    labels = [task.label_of(task.example("train", 0, i)) for i in range(800)]
    shares = np.bincount(labels, minlength=4) / 800
    assert np.all(np.abs(shares - 0.25) < 0.06), shares
    lengths = [task.example("train", 0, i).footprint for i in range(200)]
    assert max(lengths) <= task.max_tokens + 2 and min(lengths) >= 12 + 2


def test_tokenizer_is_the_one_of_the_shakespeare_lm_task():
    """A model pre-trained on task=shakespeare (char) reads these examples with its own ids."""
    lm = make_task("shakespeare", tokenizer="char", seq_len=32)
    cls = make_task("shakespeare_speech", label="speaker")
    assert lm.tokenizer.vocab_size == cls.tokenizer.vocab_size
    assert all(lm.tokenizer.decode([i]) == cls.tokenizer.decode([i]) for i in range(lm.tokenizer.vocab_size))


@pytest.mark.parametrize("params,message", [
    ({"label": "genre"}, "label"),
    ({"plays": ["hamlet", "no_such_play"]}, "no_such_play"),
    ({"plays": ["hamlet"]}, "plays"),
    ({"label": "speaker", "n_classes": 1}, "n_classes"),
    ({"max_chars": 10, "min_chars": 20}, "min_chars"),
])
def test_bad_params_name_the_key(params, message):
    with pytest.raises(ValueError, match=message):
        make_task("shakespeare_speech", **params)
