"""Formatters, packing, fit rule, fingerprint and iterator tests for archcmp.data (numpy only)."""
import json

import numpy as np
import pytest

from archcmp.data import (ARCHS, BatchIterator, Example, Fingerprinter, eval_batches, fingerprint,
                          fit_example, format_examples, make_formatter, make_task, pack_rows)
from archcmp.data import vocab
from archcmp.data.noising import span_reconstruct
from archcmp.data.pipeline import batch_rng

# Two hand-made examples of different lengths (footprints 6 and 6), packed into one row of 13.
EX1 = Example([21, 22], [23, vocab.EOS])
EX2 = Example([24], [25, 26, vocab.EOS])
T = 13


def _fmt(arch, **kw):
    return format_examples(make_formatter(arch, T, **kw), [EX1, EX2], batch_size=1, packing=True)


def _check(batch, expected):
    assert set(batch) == set(expected), sorted(batch)
    for key, want in expected.items():
        got = batch[key]
        assert got.shape == (1, len(want)), key
        np.testing.assert_array_equal(got[0], np.asarray(want), err_msg=key)


SEG = [1] * 5 + [2] * 5 + [0] * 3
POS = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 0, 0]
DEC_IN = [1, 21, 22, 4, 23, 1, 24, 4, 25, 26, 0, 0, 0]
DEC_TGT = [21, 22, 4, 23, 2, 24, 4, 25, 26, 2, 0, 0, 0]
DEC_EVAL = [0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0]


def test_decoder_literal_packed_batch():
    common = dict(inputs=DEC_IN, targets=DEC_TGT, segment_ids=SEG, positions=POS, eval_weights=DEC_EVAL)
    _check(_fmt("decoder"), dict(common, weights=DEC_EVAL))  # default loss_on='targets'
    _check(_fmt("decoder", loss_on="all"), dict(common, weights=[1] * 10 + [0] * 3))


def test_prefix_lm_literal_packed_batch():
    prefix = [1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0]  # BOS x SEP per segment
    expected = dict(inputs=DEC_IN, targets=DEC_TGT, segment_ids=SEG, positions=POS, eval_weights=DEC_EVAL,
                    weights=DEC_EVAL, prefix_mask=prefix)
    batch = _fmt("prefix_lm")
    _check(batch, expected)
    assert batch["prefix_mask"].dtype == bool
    _check(_fmt("prefix_lm", loss_on="all"), dict(expected, weights=[1] * 10 + [0] * 3))


def test_encoder_literal_packed_batch():
    slots = [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0]
    _check(_fmt("encoder"), dict(
        inputs=[1, 21, 22, 4, 3, 3, 1, 24, 4, 3, 3, 3, 0],
        targets=[0, 0, 0, 0, 23, 2, 0, 0, 0, 25, 26, 2, 0],
        weights=slots, eval_weights=slots,
        segment_ids=[1] * 6 + [2] * 6 + [0],
        positions=[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0]))


def test_encdec_literal_packed_batch():
    dec_w = [1, 1, 1, 1, 1] + [0] * 8
    _check(_fmt("encdec"), dict(
        enc_inputs=[21, 22, 24] + [0] * 10,
        enc_segment_ids=[1, 1, 2] + [0] * 10,
        enc_positions=[0, 1, 0] + [0] * 10,
        inputs=[1, 23, 1, 25, 26] + [0] * 8,
        targets=[23, 2, 25, 26, 2] + [0] * 8,
        weights=dec_w, eval_weights=dec_w,
        segment_ids=[1, 1, 2, 2, 2] + [0] * 8,
        positions=[0, 1, 0, 1, 2] + [0] * 8))


def test_unpacked_rows_and_padding_row():
    batch = format_examples(make_formatter("decoder", 8), [EX1, EX2], batch_size=3, packing=False)
    np.testing.assert_array_equal(batch["inputs"], [[1, 21, 22, 4, 23, 0, 0, 0],
                                                    [1, 24, 4, 25, 26, 0, 0, 0],
                                                    [0] * 8])
    np.testing.assert_array_equal(batch["segment_ids"][:, 0], [1, 1, 0])
    assert batch["weights"].dtype == np.float32 and batch["inputs"].dtype == np.int32


def _target_stream(batches):
    return np.concatenate([b["targets"][b["eval_weights"] == 1] for b in batches])


def test_eval_weights_select_same_targets_for_every_arch():
    task = make_task("addition", digits=[1, 4])
    streams = {}
    for arch in ARCHS:
        batches, examples = eval_batches(task, "validation", arch, seq_len=32, batch_size=4, num_examples=30)
        assert len(examples) == 30
        streams[arch] = _target_stream(batches)
        for b in batches:
            assert set(b) >= {"inputs", "targets", "weights", "eval_weights", "segment_ids", "positions"}
            assert b["inputs"].shape == (4, 32)
    want = np.concatenate([ex.targets for ex in examples])
    for arch, got in streams.items():
        np.testing.assert_array_equal(got, want, err_msg=arch)


def test_pretraining_layouts_have_no_eval_weights_and_are_seeded():
    fmt = make_formatter("encoder", T, objective="mlm", vocab_size=40)
    a = format_examples(fmt, [EX1, EX2], 1, rng=batch_rng(0, 5))
    b = format_examples(fmt, [EX1, EX2], 1, rng=batch_rng(0, 5))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["eval_weights"].sum() == 0 and a["weights"].sum() >= 2  # >= 1 chosen per segment
    chosen = a["weights"][0] == 1
    assert not chosen[[0, 3, 6, 8]].any()  # BOS / SEP never chosen
    with pytest.raises(ValueError, match="rng"):
        format_examples(fmt, [EX1], 1)


def test_encdec_span_batch_reconstructs_text():
    fmt = make_formatter("encdec", 70, objective="span")
    exs = [Example(np.arange(21, 21 + n), np.arange(60, 60 + m)) for n, m in [(10, 12), (20, 5), (3, 9)]]
    batch = format_examples(fmt, exs, 1, rng=batch_rng(3, 0))
    assert batch["eval_weights"].sum() == 0
    for k, ex in enumerate(exs, start=1):
        enc = batch["enc_inputs"][0][batch["enc_segment_ids"][0] == k]
        dec = batch["targets"][0][batch["segment_ids"][0] == k]
        dec_in = batch["inputs"][0][batch["segment_ids"][0] == k]
        np.testing.assert_array_equal(dec_in, np.concatenate([[vocab.BOS], dec[:-1]]))
        np.testing.assert_array_equal(span_reconstruct(enc, dec), np.concatenate([ex.inputs, ex.targets]))


def test_fit_rule_drop_and_truncate():
    ex = Example(np.arange(21, 31), np.arange(40, 46))  # footprint 18
    assert fit_example(ex, 18) is ex
    assert fit_example(ex, 17) is None
    cut = fit_example(ex, 10, "truncate")  # budget 8: all 6 targets, the last 2 inputs
    assert cut.inputs.tolist() == [29, 30] and cut.targets.tolist() == list(range(40, 46))
    cut = fit_example(ex, 6, "truncate")  # budget 4: 3 targets (one slot kept for an input)
    assert cut.inputs.tolist() == [30] and cut.targets.tolist() == [40, 41, 42]
    assert cut.footprint == 6
    with pytest.raises(ValueError, match="fit policy"):
        fit_example(ex, 10, "squash")


def test_pack_rows_greedy_in_order():
    exs = [Example([21] * n, [22]) for n in (3, 4, 8, 1, 1)]  # footprints 6, 7, 11, 4, 4
    rows, used = pack_rows(exs, batch_size=2, seq_len=13, packing=True)
    assert [len(r) for r in rows] == [2, 1] and used == 3
    rows, used = pack_rows(exs, batch_size=10, seq_len=13, packing=True)
    assert [len(r) for r in rows] == [2, 1, 2] and used == 5  # no back-filling: order is kept
    rows, used = pack_rows(exs, batch_size=10, seq_len=13, packing=False)
    assert [len(r) for r in rows] == [1] * 5 and used == 5


def _run(arch, seed, steps, task, **kw):
    fmt = make_formatter(arch, 24, **kw)
    it = BatchIterator(task, "train", seed, 4, fmt)
    exs = []
    for _ in range(steps):
        next(it)
        exs.extend(it.last_examples)
    return it, exs


def test_same_examples_and_fingerprint_for_every_arch_and_drops_agree():
    task = make_task("addition", digits=[1, 8])  # long ones (footprint up to 29) get dropped at T=24
    runs = {arch: _run(arch, 7, 5, task) for arch in ARCHS}
    it0, exs0 = runs["decoder"]
    assert it0.dropped > 0
    assert it0.fingerprint == fingerprint(exs0)
    for arch, (it, exs) in runs.items():
        assert exs == exs0, arch
        assert it.fingerprint == it0.fingerprint and it.dropped == it0.dropped and it.state() == it0.state()
    other, _ = _run("decoder", 8, 5, task)
    assert other.fingerprint != it0.fingerprint


def test_fingerprint_incremental_and_order_sensitive():
    exs = [EX1, EX2, Example([21], [22])]
    fp = Fingerprinter()
    fp.update(exs[0])
    resumed = Fingerprinter.from_state(json.loads(json.dumps(fp.state())))
    resumed.update_many(exs[1:])
    assert resumed.hexdigest() == fingerprint(exs) and resumed.count == 3
    assert fingerprint(exs[::-1]) != fingerprint(exs)
    # lengths are hashed: moving a token from inputs to targets changes the hash
    assert fingerprint([Example([21, 22], [23])]) != fingerprint([Example([21], [22, 23])])


@pytest.mark.parametrize("arch,kw", [("encoder", dict(objective="mlm", vocab_size=60)), ("encdec", dict(objective="span")),
                                     ("prefix_lm", {})])
def test_iterator_restore_resumes_exactly(arch, kw):
    task = make_task("modular", p=7, train_frac=0.5)  # 24 train pairs -> several epochs
    fmt = make_formatter(arch, 24, **kw)
    it = BatchIterator(task, "train", 3, 3, fmt)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.state()))
    after = [next(it) for _ in range(6)]
    assert it.state()["epoch"] >= 1
    resumed = BatchIterator(task, "train", 3, 3, fmt)
    resumed.restore(state)
    for want in after:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert resumed.state() == it.state()
    with pytest.raises(ValueError, match="seed"):
        BatchIterator(task, "train", 4, 3, fmt).restore(state)


def test_finite_iterator_epochs_cover_split_once_each():
    task = make_task("modular", p=5, train_frac=0.6)
    it = BatchIterator(task, "train", 0, 4, make_formatter("decoder", 16), packing=False, num_epochs=2)
    seen = []
    for _ in it:
        seen.extend(it.last_examples)
    n = task.size("train")
    assert len(seen) == 2 * n
    assert set(seen[:n]) == set(seen[n:]) and len(set(seen[:n])) == n
    assert seen[:n] != seen[n:]  # each epoch reshuffled


def test_formatter_rejects_bad_options():
    with pytest.raises(ValueError, match="arch"):
        make_formatter("rnn", 16)
    with pytest.raises(ValueError, match="objective"):
        make_formatter("decoder", 16, objective="mlm")
    with pytest.raises(ValueError, match="loss_on"):
        make_formatter("decoder", 16, loss_on="prefix")
    with pytest.raises(ValueError, match="enc_len"):
        make_formatter("encdec", 16, enc_len=8)
    with pytest.raises(ValueError, match="colour"):
        make_formatter("decoder", 16, colour="red")


def test_pretraining_objectives_see_the_same_examples_as_every_task_layout():
    """MLM (encoder) and span corruption (encdec) noise the examples, never choose them: the example
    stream, drops and fingerprint equal the task layouts', and the noise itself is seeded."""
    task = make_task("addition", digits=[1, 8])
    runs = {arch: _run(arch, 7, 5, task) for arch in ARCHS}
    vocab_size = task.tokenizer.vocab_size
    noised = {"mlm": _run("encoder", 7, 5, task, objective="mlm", vocab_size=vocab_size),
              "span": _run("encdec", 7, 5, task, objective="span")}
    it0, exs0 = runs["decoder"]
    assert it0.dropped > 0
    for name, (it, exs) in noised.items():
        assert exs == exs0, name
        assert it.fingerprint == it0.fingerprint == fingerprint(exs), name
        assert it.dropped == it0.dropped and it.state() == it0.state(), name
    # same seed, same noise: the batches themselves repeat
    for name, kw in (("mlm", dict(objective="mlm", vocab_size=vocab_size)), ("span", dict(objective="span"))):
        arch = "encoder" if name == "mlm" else "encdec"
        a = BatchIterator(task, "train", 7, 4, make_formatter(arch, 24, **kw))
        b = BatchIterator(task, "train", 7, 4, make_formatter(arch, 24, **kw))
        for _ in range(3):
            x, y = next(a), next(b)
            assert all(np.array_equal(x[k], y[k]) for k in x), name
