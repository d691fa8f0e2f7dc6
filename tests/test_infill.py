"""task=infill: the missing span needs both sides, the examples are identical for every
architecture (fingerprint), and each architecture's layout holds the sides asked for."""
import numpy as np
import pytest

from archcmp.data import eval_batches, fingerprint, make_task, vocab

ARCHS = ("encoder", "decoder", "prefix_lm", "encdec")


def test_answer_hand_computed_and_text_layout():
    task = make_task("infill", side=4, span=2)
    # left 1239, right 4567: the hole's neighbours 3,9 and 4,5 -> (3+4, 9+5) mod 10 = 7, 4
    np.testing.assert_array_equal(task.answer(np.array([1, 2, 3, 9]), np.array([4, 5, 6, 7])), [7, 4])
    for ex in task.examples("validation", 0, limit=20):
        text, answer = task.tokenizer.decode(ex.inputs), task.tokenizer.decode(ex.targets[:-1])
        left, right = text[:4], text[6:]
        assert text[4:6] == "??" and len(right) == 4 and ex.targets[-1] == vocab.EOS
        want = "".join(str((int(a) + int(b)) % 10) for a, b in zip(left[2:], right[:2]))
        assert answer == want


def test_one_side_alone_does_not_determine_the_span():
    """Over many examples with the same left side, the span takes many values (and vice versa)."""
    task = make_task("infill", side=2, span=1)
    spans = {}
    for ex in task.examples("train", 0, limit=400):
        text = task.tokenizer.decode(ex.inputs)
        spans.setdefault(text[:2], set()).add(task.tokenizer.decode(ex.targets[:-1]))
    assert max(len(v) for v in spans.values()) >= 5


def test_examples_identical_across_architectures_and_both_sides_visible():
    task = make_task("infill", side=4, span=2)
    prints, seen_right = set(), {}
    for arch in ARCHS:
        batches, exs = eval_batches(task, "validation", arch, 16, 8, 8, enc_len=16 if arch == "encdec" else None,
                                    packing=False)
        prints.add(fingerprint(exs))
        row = batches[0]["enc_inputs" if arch == "encdec" else "inputs"][0]
        right = exs[0].inputs[-4:]  # the right side's token ids
        seen_right[arch] = any((row[i:i + 4] == right).all() for i in range(len(row) - 3))
    assert len(prints) == 1
    assert all(seen_right.values()), seen_right


def test_left_context_withholds_the_right_side():
    both = list(make_task("infill", side=4, span=2).examples("validation", 0, limit=5))
    left = list(make_task("infill", side=4, span=2, context="left").examples("validation", 0, limit=5))
    for b, l in zip(both, left):
        np.testing.assert_array_equal(l.inputs, b.inputs[:6])  # left side + hole, nothing after
        np.testing.assert_array_equal(l.targets, b.targets)


def test_splits_disjoint_and_bad_parameters():
    task = make_task("infill", side=3, span=1)
    key = lambda ex: bytes(ex.inputs)  # noqa: E731
    train = {key(ex) for ex in task.examples("train", 0, limit=300)}
    val = {key(ex) for ex in task.examples("validation", 0, limit=100)}
    assert not train & val
    with pytest.raises(ValueError, match=r"span"):
        make_task("infill", side=2, span=3)
    with pytest.raises(ValueError, match=r"context"):
        make_task("infill", context="right")
