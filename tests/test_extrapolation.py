"""ALiBi and length extrapolation: published slopes, literal biases, every encoding at 2x the
training length (learned: a clear error), the task scaling rule and the analysis CLI end to end."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from archcmp.analysis.extrapolation.cli import longer_task, summarize
from archcmp.analysis.common.probe_tables import t_interval
from archcmp.model.config import ModelConfig
from archcmp.model.embeddings import Positions, alibi_slopes
from archcmp.model.models import build_model

MAX_LEN = 8


def test_alibi_slopes_eight_heads_are_the_published_values():
    # Press et al. 2022: for 8 heads the slopes are 1/2, 1/4, ..., 1/256
    want = [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    np.testing.assert_allclose(np.asarray(alibi_slopes(8)), want, rtol=0, atol=0)


def test_alibi_slopes_other_head_counts():
    np.testing.assert_allclose(np.asarray(alibi_slopes(4)), [1 / 4, 1 / 16, 1 / 64, 1 / 256])
    # 6 heads: the 4-head slopes, then the 1st and 3rd of the 8-head slopes
    np.testing.assert_allclose(np.asarray(alibi_slopes(6)), [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8])


def test_alibi_bias_literal_matrix():
    from flax import nnx

    cfg = ModelConfig(pos_encoding="alibi", n_heads=2, d_model=16)  # slopes 1/16, 1/256
    pos = Positions(cfg, nnx.Rngs(0))
    bias = np.asarray(pos.bias(jnp.arange(3)[None]))  # [1, 2, 3, 3]
    dist = np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]], np.float32)
    np.testing.assert_allclose(bias[0, 0], -dist / 16)
    np.testing.assert_allclose(bias[0, 1], -dist / 256)
    # the cached path (explicit key positions) gives the rows of the same matrix
    np.testing.assert_allclose(np.asarray(pos.bias(jnp.array([[2]]), jnp.arange(3)[None]))[0, 0], -dist[2:] / 16)


def _batch(arch, T, shift=0):
    ids = (np.arange(T) % 20 + 10)[None].astype(np.int32)
    seg = np.ones((1, T), np.int32)
    pos = np.arange(T, dtype=np.int32)[None] + shift
    b = {"inputs": ids, "segment_ids": seg, "positions": pos}
    if arch == "prefix_lm":
        b["prefix_mask"] = np.arange(T)[None] < T // 2
    if arch == "encdec":
        b.update(enc_inputs=ids, enc_segment_ids=seg, enc_positions=pos)
    return b


def _model(arch, pe, **kw):
    cfg = dict(arch=arch, pos_encoding=pe, vocab_size=32, d_model=16, n_heads=2, d_ff=32, n_layers=1,
               max_len=MAX_LEN, scan_layers=False, init_std=0.3)
    cfg.update(kw)
    return build_model(ModelConfig(**cfg), 0)


@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix_lm", "encdec"])
@pytest.mark.parametrize("pe", ["sinusoidal", "rope", "relative", "alibi", "none"])
def test_every_computed_encoding_runs_at_twice_the_training_length(arch, pe):
    model = _model(arch, pe)
    out = np.asarray(model(_batch(arch, 2 * MAX_LEN)))
    assert out.shape == (1, 2 * MAX_LEN, 32) and np.isfinite(out).all()
    # causal stacks: the first MAX_LEN outputs are those of the training-length input
    if arch in ("decoder", "encdec"):
        short = np.asarray(model(_batch(arch, MAX_LEN)))
        if arch == "decoder":
            np.testing.assert_allclose(out[:, :MAX_LEN], short, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["encoder", "decoder", "prefix_lm", "encdec"])
def test_learned_positions_refuse_longer_inputs_with_one_line_error(arch):
    model = _model(arch, "learned")
    with pytest.raises(ValueError, match=r"^model\.max_len=8: sequence of 16 tokens is longer than the position "
                                         r"table \(model\.pos_encoding='learned' has no row past max_len\)$"):
        model(_batch(arch, 2 * MAX_LEN))


def test_alibi_decoder_only_sees_offsets():
    model = _model("decoder", "alibi")
    base = np.asarray(model(_batch("decoder", 12)))
    np.testing.assert_allclose(np.asarray(model(_batch("decoder", 12, shift=7))), base, rtol=1e-4, atol=1e-5)
    # and the bias matters: the same model without it gives other outputs
    plain = np.asarray(_model("decoder", "none")(_batch("decoder", 12)))
    assert np.abs(plain - base).max() > 1e-3


def test_alibi_cached_greedy_matches_uncached():
    from archcmp.decoding.generate import DecodeConfig, run_lm

    model = _model("decoder", "alibi", n_layers=2)
    prompts = [np.array([10, 11, 12]), np.array([13, 14, 15, 16, 17])]
    cached, _ = run_lm(model, prompts, DecodeConfig(max_new_tokens=12))  # 17 tokens > max_len 8
    uncached, _ = run_lm(model, prompts, DecodeConfig(max_new_tokens=12, use_cache=False))
    np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))


def test_longer_task_scales_length_parameters():
    text = {"name": "shakespeare", "params": {"tokenizer": "char", "seq_len": 126}, "seq_len": 128}
    assert longer_task(text, 4) == {"name": "shakespeare", "params": {"tokenizer": "char", "seq_len": 510},
                                    "seq_len": 512, "enc_len": None}
    ind = {"name": "induction", "params": {"length": [8, 24]}, "seq_len": 52, "enc_len": 40}
    assert longer_task(ind, 2) == {"name": "induction", "params": {"length": [16, 48]}, "seq_len": 104, "enc_len": 80}
    with pytest.raises(ValueError, match=r"task\.name='addition': no length parameter"):
        longer_task({"name": "addition", "params": {"digits": 3}, "seq_len": 16}, 2)
    with pytest.raises(ValueError, match=r"factor=0"):
        longer_task(text, 0)


def test_summary_interval_over_seeds():
    # three seeds 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.302653 -> half-width 4.302653 / sqrt(3)
    mean, half, n = t_interval([1.0, 2.0, 3.0, float("nan")])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)
    df = pd.DataFrame({"pos_encoding": "rope", "arch": "decoder", "factor": 2, "eval_len": 64,
                       "loss": [1.0, 2.0, 3.0], "accuracy": 0.5, "exact_match": 0.0})
    row = summarize(df).iloc[0]
    assert row["loss"] == 2.0 and row["n_seeds"] == 3


def test_seed_table_ratios():
    from archcmp.analysis.extrapolation.cli import seed_table

    df = pd.DataFrame({"run": ["a", "a", "b", "b"], "arch": "decoder", "pos_encoding": ["rope", "rope", "alibi", "alibi"],
                       "seed": [0, 0, 1, 1], "factor": [1, 4, 1, 4], "loss": [2.0, 3.0, 1.0, float("nan")]})
    t = seed_table(df).set_index(["group", "metric"])["value"]
    assert t[("rope", "loss_ratio_4x")] == 1.5 and t[("rope", "loss_4x")] == 3.0
    assert t[("alibi", "loss_ratio_1x")] == 1.0 and np.isnan(t[("alibi", "loss_ratio_4x")])


@pytest.mark.slow  # two tiny trainings: ~4 min on a loaded 2-core machine
def test_extrapolation_cli_end_to_end(tmp_path):
    """A tiny ALiBi decoder and a learned-position decoder trained on induction, scored at 1x and 2x."""
    from omegaconf import OmegaConf

    from archcmp.analysis.cli import main
    from archcmp.training.trainer import train
    from hydra_cfg import TINY, compose_cfg

    for pe in ("alibi", "learned"):
        cfg = compose_cfg(["arch=decoder", *TINY, "task=induction", "task.params.length=[4,8]",
                           f"+model.pos_encoding={pe}", "size=femto"])
        run_dir = tmp_path / "sweep" / f"decoder-{pe}"
        train(cfg, run_dir)
        (run_dir / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    out = tmp_path / "out"
    assert main(["extrapolation", str(tmp_path / "sweep"), "--factors", "1", "2", "--examples", "8",
                 "--out", str(out)]) == 0
    per_run = pd.read_csv(out / "per_run.csv")
    per_run["note"] = per_run["note"].fillna("")
    got = {(r.pos_encoding, r.factor): r for r in per_run.itertuples()}
    assert set(got) == {("alibi", 1), ("alibi", 2), ("learned", 1), ("learned", 2)}
    assert got[("alibi", 2)].eval_len == 48 and np.isfinite(got[("alibi", 2)].loss)
    assert np.isfinite(got[("learned", 1)].loss) and np.isnan(got[("learned", 2)].loss)
    assert "no row past max_len" in got[("learned", 2)].note
    # at 2x the examples are 2x longer: the untrained-length loss is a real, different number
    assert got[("alibi", 2)].loss != got[("alibi", 1)].loss
    assert (out / "extrapolation.png").stat().st_size > 1000 and "| alibi" in (out / "table.md").read_text()
    seeds = pd.read_csv(out / "seeds.csv")
    assert set(seeds["group"]) == {"alibi", "learned"} and "loss_ratio_2x" in set(seeds["metric"])
