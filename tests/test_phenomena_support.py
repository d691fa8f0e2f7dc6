"""Support for the phenomena reproductions (issue 17): one-token-per-residue modular arithmetic,
full-batch training, attention-only blocks, the parameter-norm metric."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from archcmp.model.accounting import count_params, forward_flops, traced_matmul_flops
from archcmp.model.config import ModelConfig
from archcmp.data import FullBatchIterator, make_formatter, make_task, vocab
from archcmp.model.models import build_model

from test_models import ARCHS, make_batch


def test_modular_symbols_one_token_per_residue_and_exact_train_size():
    p = 13
    task = make_task("modular", p=p, train_frac=0.3, tokens="symbols")
    assert task.size("train") == round(0.3 * p * p) == 51
    assert sum(task.size(s) for s in ("train", "validation", "test")) == p * p
    plus = task.tokenizer.encode("+")[0]
    seen = set()
    for split in ("train", "validation", "test"):
        for ex in task.examples(split, seed=2):
            a, op, b = (int(t) for t in ex.inputs)
            assert op == plus and len(ex.targets) == 2 and ex.targets[1] == vocab.EOS
            ra, rb = a - vocab.N_SPECIAL - 4, b - vocab.N_SPECIAL - 4  # residues follow the 4 operators
            assert ex.targets[0] - vocab.N_SPECIAL - 4 == (ra + rb) % p
            seen.add((split, ra, rb))
    assert len(seen) == p * p
    # the split depends on split_seed only, not on the run seed or the tokens
    digits = make_task("modular", p=p, train_frac=0.3)
    assert np.array_equal(task.pairs("train"), digits.pairs("train"))
    with pytest.raises(ValueError, match="tokens"):
        make_task("modular", tokens="words")


def test_full_batch_iterator_is_the_whole_split_every_step_and_resumes():
    task = make_task("modular", p=7, train_frac=0.5, tokens="symbols")
    fmt = make_formatter("decoder", 7)
    it = FullBatchIterator(task, "train", 3, fmt)
    n = task.size("train")
    b1, b2 = next(it), next(it)
    assert b1["inputs"].shape == (n, 7) and (b1["segment_ids"] == 1).any(axis=1).all()  # one example per row
    rows = {tuple(r) for r in b1["inputs"]}
    want = {tuple(np.r_[vocab.BOS, ex.inputs, vocab.SEP, ex.targets[:-1], [0] * 0]) for ex in task.examples("train", 3)}
    assert {r[:6] for r in rows} == {w[:6] for w in want} and len(rows) == n
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k])
    state = json.loads(json.dumps(it.state()))
    assert state["fingerprint"]["count"] == 2 * n
    resumed = FullBatchIterator(task, "train", 3, fmt)
    resumed.restore(state)
    next(it), next(resumed)
    assert resumed.state() == it.state()
    with pytest.raises(ValueError, match="full-batch"):
        resumed.restore({**state, "full_batch": False})
    with pytest.raises(ValueError, match="endless"):
        FullBatchIterator(make_task("addition", digits=1), "train", 0, fmt)
    with pytest.raises(ValueError, match="seq_len"):
        FullBatchIterator(make_task("modular", p=7, train_frac=0.5), "train", 0, make_formatter("decoder", 6))


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_only_blocks_have_no_mlp_and_are_counted(arch):
    kw = dict(arch=arch, vocab_size=64, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=16)
    full, attn_only = ModelConfig(**kw), ModelConfig(**kw, mlp=False)
    model = build_model(attn_only, 0)
    params = nnx.state(model, nnx.Param)
    names = {"/".join(str(k) for k in path) for path, _ in nnx.to_flat_state(params)}
    assert not any("mlp" in n for n in names), names
    n = sum(x.size for x in jax.tree.leaves(params))
    assert n == count_params(attn_only).total
    n_blocks = 2 * (2 if arch == "encdec" else 1)
    # each block loses wi [16, 32], wo [32, 16] and the MLP layernorm (scale + bias)
    assert count_params(full).total - n == n_blocks * (2 * 16 * 32 + 2 * 16)
    graphdef, p = nnx.split(model)
    batch = make_batch(T=12, S=7)
    traced = traced_matmul_flops(lambda q, b: nnx.merge(graphdef, q)(b), p, batch)
    formula = forward_flops(attn_only, 12, 7 if arch == "encdec" else 0)
    assert abs(traced - formula) / traced < 0.05, (traced, formula)
    assert np.isfinite(np.asarray(model(batch))).all()


def test_mlp_flag_validated_and_default_on():
    assert ModelConfig().mlp is True
    with pytest.raises(ValueError, match="model.mlp"):
        ModelConfig(mlp="no")


def test_induction_task_repeats_a_random_segment_without_a_marker():
    task = make_task("induction", length=[5, 9], n_symbols=4)
    lengths = set()
    for ex in task.examples("validation", seed=0, limit=50):
        assert len(ex.inputs) == 0 and ex.targets[-1] == vocab.EOS
        body = ex.targets[:-1]
        n = len(body) // 2
        lengths.add(n)
        assert 5 <= n <= 9 and np.array_equal(body[:n], body[n:])
        assert set(task.tokenizer.decode(body[:n])) <= set("abcd")
    assert len(lengths) > 1  # the repeat starts at a varying offset
    first = make_task("induction", length=6, prompt="first").example("train", 0, 0)
    assert np.array_equal(np.append(first.inputs, vocab.EOS), first.targets)
    with pytest.raises(ValueError, match="prompt"):
        make_task("induction", prompt="both")


def test_induction_task_filler_puts_the_pair_at_a_random_offset():
    """filler=F: F random symbols around the pair, so the repeat no longer starts at a fixed
    position; repeat_span finds the pair (checked here against the segment drawn)."""
    task = make_task("induction", length=[6, 10], n_symbols=64, tokens="symbols", filler=20)
    starts = set()
    for ex in task.examples("validation", seed=0, limit=60):
        body = ex.targets[:-1]
        start, n = task.repeat_span(ex)
        assert len(body) == 2 * n + 20 and 6 <= n <= 10 and 0 <= start <= 20
        assert np.array_equal(body[start:start + n], body[start + n:start + 2 * n])
        starts.add(start)
    assert len(starts) > 10  # offsets spread over 0..20
    plain = make_task("induction", length=[5, 9], n_symbols=4)
    ex = plain.example("train", 0, 3)
    assert plain.repeat_span(ex) == (0, (len(ex.targets) - 1) // 2)
    with pytest.raises(ValueError, match="filler"):
        make_task("induction", filler=-1)
    with pytest.raises(ValueError, match="filler"):
        make_task("induction", filler=4, prompt="first")


def test_induction_task_symbol_alphabet():
    task = make_task("induction", length=12, n_symbols=300, tokens="symbols")
    assert task.tokenizer.vocab_size == vocab.N_SPECIAL + 300
    seen = set()
    for ex in task.examples("train", seed=1, limit=40):
        body = ex.targets[:-1]
        assert np.array_equal(body[:12], body[12:])
        seen |= set(body.tolist())
    assert min(seen) >= vocab.N_SPECIAL and max(seen) < vocab.N_SPECIAL + 300
    assert len(seen) > 200  # 480 draws over 300 symbols reach most of them
    with pytest.raises(ValueError, match="n_symbols"):
        make_task("induction", n_symbols=27)  # letters stop at z
    with pytest.raises(ValueError, match="tokens"):
        make_task("induction", tokens="words")
