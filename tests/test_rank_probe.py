"""The attention-rank probe: capture (archcmp.analysis.common.capture) and `archcmp-analyze rank`."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from figures import png_pixels

from archcmp.analysis.common import capture as C
from archcmp.analysis.rank.metrics import extract_blocks
from archcmp.model.config import ModelConfig
from archcmp.data import eval_batches, make_task
from archcmp.model.models import build_model

ARCHS = ("encoder", "decoder", "prefix_lm", "encdec")
T = 32


@pytest.fixture(scope="module")
def task():
    return make_task("addition", digits=[1, 3])


def _model(arch, task, n_layers=2, d_model=32, **kw):
    # The probes read probabilities, which only the explicit attention path returns; the exact
    # equalities below hold on that path (the blocked default agrees to float rounding: checked once).
    kw.setdefault("attention_impl", "explicit")
    cfg = ModelConfig(arch=arch, vocab_size=task.tokenizer.vocab_size, d_model=d_model, n_layers=n_layers,
                      n_heads=4, d_ff=64, max_len=T, pos_encoding="rope", **kw)
    return build_model(cfg, seed=0)


def _packed_batch(task, arch, rows=3, examples=8):
    batches, _ = eval_batches(task, "validation", arch, T, rows, examples, seed=0, enc_len=T if arch == "encdec" else None)
    b = batches[0]
    assert (b["segment_ids"].max(axis=1) >= 2).any() and (b["segment_ids"] == 0).any()  # packed and padded
    return b


@pytest.fixture(scope="module")
def models(task):
    cache = {}

    def get(arch, n_layers=2):
        if (arch, n_layers) not in cache:
            cache[arch, n_layers] = _model(arch, task, n_layers=n_layers)
        return cache[arch, n_layers]
    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_capture_does_not_change_logits(task, models, arch):
    model = models(arch)
    batch = _packed_batch(task, arch)
    plain = np.asarray(model(C.model_batch(batch)))
    cap = C.capture(model, batch)
    np.testing.assert_array_equal(cap.logits, plain)
    blocked = _model(arch, task, attention_impl="blocked")(C.model_batch(batch))
    np.testing.assert_allclose(cap.logits, np.asarray(blocked), rtol=1e-5, atol=1e-5)
    want = {"encdec": {"enc_self", "dec_self", "cross"}}.get(arch, {"self"})
    assert set(cap.attention) == want
    assert set(cap.hidden) == ({"enc_hidden", "dec_hidden"} if arch == "encdec" else {"hidden"})
    L, (B, Tq) = 2, batch["segment_ids"].shape
    for kind, probs in cap.attention.items():
        assert probs.shape[:4] == (L, B, 4, Tq) and probs.dtype == np.float32


def test_jitted_probe_matches_plain_forward(task, models):
    """The single jitted function the CLI uses (capture + ablations) gives the plain forward's logits."""
    model = models("prefix_lm")
    batch = _packed_batch(task, "prefix_lm")
    graphdef, state = nnx.split(model)
    plain_jit = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b))(state, C.model_batch(batch))
    cap, hidden = C.probe(model, batch, C.make_probe(graphdef), state)
    np.testing.assert_array_equal(cap.logits, np.asarray(plain_jit))
    np.testing.assert_allclose(hidden[("stack", "full")][1:], cap.hidden["hidden"], atol=1e-5)


def _alone_batches(batch, pairs, rows):
    """Each (row, segment) of ``pairs`` alone in a row of its own, same [rows, T] shape as ``batch``
    (so compiled code is reused); yields (batch, [(row in new batch, original (b, s))])."""
    for start in range(0, len(pairs), rows):
        chunk = pairs[start:start + rows]
        out = {k: np.zeros_like(v) for k, v in batch.items()}
        for r, (b, s) in enumerate(chunk):
            idx = np.flatnonzero(batch["segment_ids"][b] == s)
            for k in ("inputs", "positions", "prefix_mask"):
                if k in batch:
                    out[k][r, :idx.size] = batch[k][b, idx]
            out["segment_ids"][r, :idx.size] = 1
            if "enc_inputs" in batch:
                e = np.flatnonzero(batch["enc_segment_ids"][b] == s)
                out["enc_inputs"][r, :e.size] = batch["enc_inputs"][b, e]
                out["enc_positions"][r, :e.size] = batch["enc_positions"][b, e]
                out["enc_segment_ids"][r, :e.size] = 1
        yield out, list(enumerate(chunk))


@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix_lm", "encdec"])
def test_packed_blocks_are_each_examples_own_attention(task, models, arch):
    model = models(arch)
    batch = _packed_batch(task, arch)
    graphdef, state = nnx.split(model)
    forward = C.make_forward(graphdef)
    cap = C.capture(model, batch, forward=forward, state=state)
    segments = C.attention_segments(arch, batch)
    assert set(segments) == {"encoder": {"self"}, "decoder": {"self"}, "prefix_lm": {"self", "prefix", "causal"}}.get(
        arch, {"enc_self", "dec_self", "cross"})
    df = C.capture_metrics(cap, batch, arch)
    L, H = 2, 4
    pairs = [(b, int(s)) for b, r in enumerate(batch["segment_ids"]) for s in np.unique(r[r > 0])]
    for kind, (seg_q, seg_k) in segments.items():
        d = df[df["kind"] == kind]
        assert len(d) == L * H * len(pairs)
        assert d["row_sum_err"].max() < 1e-5          # no probability mass outside the example's block
        n_real = [int(np.sum(seg_q[b] == s)) for b, s in pairs]
        assert sorted(d.groupby(["batch", "segment"])["n"].first()) == sorted(n_real)
    # every block equals the attention of that example run alone (packing and padding change nothing)
    blocks = {kind: {(b, s): blk for b, s, blk in extract_blocks(cap.attention[C.SOURCE_KIND.get(kind, kind)],
                                                                  seg_q, seg_k)}
              for kind, (seg_q, seg_k) in segments.items()}
    rows = batch["segment_ids"].shape[0]
    for alone_batch, chunk in _alone_batches(batch, pairs, rows):
        alone = C.capture(model, alone_batch, forward=forward, state=state)
        alone_blocks = {kind: {b: blk for b, _, blk in extract_blocks(
            alone.attention[C.SOURCE_KIND.get(kind, kind)], *C.attention_segments(arch, alone_batch)[kind])}
            for kind in segments}
        for r, key in chunk:
            for kind in segments:
                blk, ref = blocks[kind][key], alone_blocks[kind][r]
                assert blk.shape == ref.shape
                np.testing.assert_allclose(blk, ref, atol=2e-6)
                if kind in ("self", "dec_self") and arch in ("decoder", "encdec"):  # causal: lower-triangular
                    assert np.all(np.triu(blk, 1) == 0)
                if arch == "encoder" or kind in ("enc_self", "cross"):  # bidirectional: every entry > 0
                    assert np.all(blk > 0)
                if kind == "prefix":                                        # bidirectional inside the prefix
                    assert np.all(blk > 0)
                if kind == "causal":    # causal among the targets, with mass left on the prefix (renormalised later)
                    assert np.all(np.triu(blk, 1) == 0) and np.all(blk[..., np.tri(blk.shape[-1]) > 0] > 0)
                    assert np.all(blk.sum(axis=-1) < 1 - 1e-3)


@pytest.mark.parametrize("arch", ["encoder", "decoder"])
def test_pure_attention_collapses_faster_than_full_model(task, models, arch):
    model = models(arch)
    batch = _packed_batch(task, arch)
    graphdef, state = nnx.split(model)
    cap, hid = C.probe(model, batch, C.make_probe(graphdef), state)
    np.testing.assert_allclose(hid[("stack", "full")][1:], cap.hidden["hidden"], atol=1e-5)  # full == the model
    assert hid[("stack", "pure_attention")].shape == (3,) + cap.hidden["hidden"].shape[1:]
    coll = C.collapse_from_hidden(hid, batch)
    curve = coll.groupby(["variant", "layer"])["relative"].mean().unstack("layer")
    pure, full = curve.loc["pure_attention"].to_numpy(), curve.loc["full"].to_numpy()
    assert pure[0] == pytest.approx(full[0])               # same input at depth 0
    assert np.all(np.diff(pure) < 0), pure                 # residual decreases with depth
    assert pure[-1] < 0.5 * full[-1], (pure, full)         # and ends far below the full model's
    assert full[-1] > 0.5 * full[0]                        # skip connections keep the full model's rank
    # the same holds example by example
    last = coll[coll["layer"] == 2].pivot_table(index=["batch", "segment"], columns="variant", values="relative")
    assert (last["pure_attention"] < last["full"]).all()


# ----------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def tiny_run(tiny_runs):  # the session's shared tiny prefix_lm run (tests/conftest.py)
    run_dir, summary = tiny_runs["prefix_lm"]
    assert summary["status"] == "complete"
    return run_dir


def test_rank_cli_on_tiny_run(tiny_run, tmp_path, capsys):
    from archcmp.analysis.cli import main
    from archcmp.loading.run import read_run, saved_steps

    steps = saved_steps(read_run(tiny_run))
    assert steps == [2, 4]
    out = tmp_path / "rank"
    assert main(["rank", str(tiny_run.parent), "--out", str(out), "--examples", "4"]) == 0
    printed = capsys.readouterr().out
    assert "matrices/s" in printed
    for name in ("table.md", "metrics.csv", "collapse.csv"):
        assert (out / name).stat().st_size > 0
    pngs = {p.name for p in out.glob("*.png")}
    for stem in ("heatmap_effective_rank_nano_init", "heatmap_effective_rank_nano_trained", "spectra_nano_init",
                 "spectra_nano_trained", "effective_rank_vs_step_nano", "log10_cond_vs_step_nano",
                 "rank_collapse_nano"):
        assert f"{stem}.png" in pngs
        assert min(png_pixels(out / f"{stem}.png").shape[:2]) >= 200, stem
    df = pd.read_csv(out / "metrics.csv")
    assert sorted(df["step"].unique()) == [0] + steps                 # init + every checkpoint
    assert set(df["kind"]) == {"self", "prefix", "causal"}
    counts = df.groupby("step").size()
    assert counts.nunique() == 1                                      # the same matrices at every step
    per_kind = df[df["step"] == 0].groupby("kind").size()
    assert (per_kind == 4 * 2 * 4).all()                              # 4 examples x 2 layers x 4 heads
    # trained parameters were really restored: attention at the last step differs from init
    a = df[df["step"] == 0].sort_values(["kind", "layer", "head", "batch", "segment"])["effective_rank"].to_numpy()
    b = df[df["step"] == 4].sort_values(["kind", "layer", "head", "batch", "segment"])["effective_rank"].to_numpy()
    assert not np.allclose(a, b)
    coll = pd.read_csv(out / "collapse.csv")
    assert set(coll["variant"]) == set(C.VARIANTS) and set(coll["stack"]) == {"stack"}
    assert sorted(coll["layer"].unique()) == [0, 1, 2]
    assert sorted(coll["step"].unique()) == [0] + steps
    table = (out / "table.md").read_text()
    assert "prefix_lm" in table and "→" in table and "matrices/s" in table and "pure_attention" in table
    # rank relative to the uniform causal matrix per checkpoint, joined with the run's evaluations there
    ck = pd.read_csv(out / "checkpoints.csv")
    assert sorted(ck["step"].unique()) == [0] + steps and set(ck["kind"]) == {"self", "prefix", "causal"}
    evals = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    want = {r["step"]: r["eval_loss"] for r in evals if "eval_loss" in r}
    got = ck[ck["kind"] == "self"].set_index("step")["eval_loss"]
    for step in steps:
        assert got[step] == pytest.approx(want[step], rel=1e-5)
    contrast = pd.read_csv(out / "prefix_contrast.csv")
    np.testing.assert_allclose(contrast["causal_minus_prefix"], contrast["causal"] - contrast["prefix"], rtol=1e-5)
    rq = pd.read_csv(out / "rank_quality.csv")
    assert set(rq["kind"]) == {"self", "prefix", "causal"} and (rq["checkpoints"] == len(steps)).all()
    assert min(png_pixels(out / "rank_vs_eval_loss.png").shape[:2]) >= 200
    assert "Prefix-LM: causal block vs prefix block" in table and "Rank vs eval loss" in table


def test_restore_matches_generic_checkpoint(tiny_run):
    """The typed restore (abstract target from nnx.split + optimizer shape) gives the saved parameters."""
    from archcmp.training.checkpoint import Checkpointer
    from archcmp.loading.run import _strip_value, read_run, restore_params

    run = read_run(tiny_run)
    _, state = nnx.split(build_model(run.model_cfg, run.summary["seed"]))
    ck = Checkpointer(tiny_run / "checkpoints", keep=None)
    try:
        typed = nnx.to_pure_dict(restore_params(ck, run, 4, state))
        generic = _strip_value(ck.restore(step=4, target=None)[0]["params"])
    finally:
        ck.close()
    flat_t = dict(jax.tree_util.tree_leaves_with_path(typed))
    flat_g = dict(jax.tree_util.tree_leaves_with_path(generic))
    assert flat_t.keys() == flat_g.keys() and len(flat_t) > 5
    for k in flat_t:
        np.testing.assert_array_equal(np.asarray(flat_t[k]), np.asarray(flat_g[k]))
    init = dict(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(state)))
    assert any(not np.array_equal(np.asarray(init[k]), np.asarray(flat_t[k])) for k in flat_t)


# ----------------------------------------------------------------------------- public API
GOLDEN_GPT2 = Path(__file__).parent / "goldens" / "pretrained" / "gpt2"


def _readme_recipe(tag: str) -> str:
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    m = re.search(rf"<!-- recipe: {tag} -->\n```python\n(.*?)```", readme, re.S)
    assert m, f"README recipe {tag} not found"
    return m.group(1)


@pytest.mark.parametrize("tag", ["load_run", "load_pretrained"])
def test_readme_recipes_run_as_written(tag, tiny_run, capsys):
    """The README's analysis recipes, executed with only the directory swapped."""
    import re

    code = _readme_recipe(tag)
    assert len(code.strip().splitlines()) <= 10
    where = tiny_run if tag == "load_run" else GOLDEN_GPT2
    code, n = re.subn(rf'{tag}\("[^"]*"', f'{tag}({str(where)!r}', code)
    assert n == 1
    exec(compile(code, f"README:{tag}", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[:2] == (["prefix_lm", "4"] if tag == "load_run" else ["gpt2", "decoder"])


def test_load_run_matches_the_probe_restore(tiny_run):
    """load_run gives the checkpoint's parameters (== the probe's typed restore), and attention /
    hidden_states cut each text's own block: causal rows, prefix columns, rows summing to one."""
    from archcmp import attention, hidden_states, load_run
    from archcmp.training.checkpoint import Checkpointer
    from archcmp.loading.run import read_run, restore_params

    run = read_run(tiny_run)
    _, state = nnx.split(build_model(run.model_cfg, run.summary["seed"]))
    with Checkpointer(tiny_run / "checkpoints", keep=None) as ck:
        want = nnx.to_pure_dict(restore_params(ck, run, 2, state))
    loaded = load_run(tiny_run, step=2)
    got = nnx.to_pure_dict(nnx.state(loaded.model))
    for (k, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree_util.tree_leaves_with_path(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(k))
    with pytest.raises(ValueError, match=r"step=3: no checkpoint .* saved steps: \[2, 4\]"):
        load_run(tiny_run, step=3)
    texts = ["12+3=", "7*8=56"]
    batch = loaded.batch(texts)
    n = [int((batch["segment_ids"][i] > 0).sum()) for i in range(2)]
    att = attention(loaded, texts)["self"]
    hid = hidden_states(loaded, texts)["stack"]
    cfg = loaded.config
    assert [a.shape for a in att] == [(cfg.n_layers, cfg.n_heads, k, k) for k in n]
    assert [h.shape for h in hid] == [(cfg.n_layers + 1, k, cfg.d_model) for k in n]
    for i, a in enumerate(att):
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
        # prefix_lm with the whole text as the task prompt: the prefix tokens all see each other
        p = int(batch["prefix_mask"][i].sum())
        assert p >= len(texts[i]) and np.all(a[..., :p, :p] > 0)


def test_rank_cli_pretrained_with_texts(tiny_run, tmp_path):
    """--pretrained DIR --texts FILE: the imported model (step 1) beside its random init (step 0),
    and the run probed on the same texts, in one table."""
    from archcmp.analysis.cli import main

    texts = tmp_path / "texts.txt"
    texts.write_text("w1 w2 w3 w4\n\nw5 w6 w7\nw8 w9\n")
    out = tmp_path / "rank"
    assert main(["rank", str(tiny_run), "--pretrained", str(GOLDEN_GPT2), "--texts", str(texts),
                 "--out", str(out)]) == 0
    df = pd.read_csv(out / "metrics.csv")
    gpt = df[df["run"] == "gpt2"]
    assert sorted(gpt["step"].unique()) == [0, 1]
    assert sorted(gpt.groupby(["step", "batch"])["n"].first().loc[1]) == [2, 3, 4]  # one block per text
    assert len(gpt) == 2 * 3 * 2 * 4  # steps x texts x layers x heads
    ran = df[df["run"] != "gpt2"]
    assert set(ran["batch"]) == {0, 1, 2} and sorted(ran["step"].unique()) == [0, 2, 4]
    runs = pd.read_csv(out / "runs.csv")
    assert runs["fingerprint"].nunique() == 1  # the same texts for both models
    assert "gpt2" in (out / "table.md").read_text()
    assert main(["rank", "--pretrained", str(GOLDEN_GPT2)]) == 2  # texts are required
