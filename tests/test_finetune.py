"""The fine-tuning stage (archcmp.training.finetune), its tasks and layouts, and MLM replacement."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from archcmp.data import make_task, vocab
from archcmp.data.classify import FinetuneFormatter
from archcmp.data.example import Example
from archcmp.data.formatters import make_formatter
from archcmp.data.noising import mlm_corrupt

FT = ["task=sum_parity", "task.seq_len=24", "train.steps=6", "train.batch_size=8", "train.eval_examples=16",
      "train.eval_batch_size=8", "train.log_every=1", "train.eval_every=3", "train.checkpoint_every=3",
      "train.progress=false", "size=nano"]


# ---- MLM replacement -------------------------------------------------------------------------------
def test_always_mask_replaces_every_selected_token():
    tokens = np.arange(21, 61, dtype=np.int32)  # 40 ordinary tokens
    cand = np.ones(40, bool)
    cand[[0, 7]] = False
    out, chosen = mlm_corrupt(tokens, cand, np.random.default_rng(3), vocab_size=64, rate=0.5, replacement="mask")
    assert chosen.sum() == 19  # round(0.5 * 38)
    assert not chosen[[0, 7]].any()
    np.testing.assert_array_equal(out[chosen], np.full(19, vocab.MASK))
    np.testing.assert_array_equal(out[~chosen], tokens[~chosen])
    # 80/10/10 on the same draw keeps some chosen tokens as they were or random: not all MASK
    bert, chosen_b = mlm_corrupt(tokens, cand, np.random.default_rng(3), vocab_size=64, rate=0.5)
    np.testing.assert_array_equal(chosen_b, chosen)
    assert (bert[chosen] != vocab.MASK).any()


def test_always_mask_through_the_formatter():
    fmt = make_formatter("encoder", 32, objective="mlm", vocab_size=64, mlm_replacement="mask", mlm_rate=0.5)
    ex = Example(np.arange(21, 41), np.arange(41, 45))
    b = fmt([[ex]], 2, np.random.default_rng(0))
    scored = b["weights"][0] > 0
    assert scored.sum() > 0
    assert (b["inputs"][0][scored] == vocab.MASK).all()
    tokens = np.concatenate([[vocab.BOS], ex.inputs, [vocab.SEP], ex.targets])
    np.testing.assert_array_equal(b["targets"][0][scored], tokens[scored[:tokens.size]])
    real = (b["segment_ids"][0] > 0) & ~scored
    np.testing.assert_array_equal(b["inputs"][0][real], tokens[real[:tokens.size]])


# ---- downstream tasks ------------------------------------------------------------------------------
def _text(task, ex):
    return task.tokenizer.decode(ex.inputs)


@pytest.mark.parametrize("name", ["sum_parity", "greater", "key_present"])
def test_downstream_labels_recomputed_from_the_text(name):
    task = make_task(name)
    for split in ("train", "validation"):
        for ex in task.examples(split, 5, limit=60):
            text, label = _text(task, ex), task.label_of(ex)
            assert ex.targets[1] == vocab.EOS
            if name == "sum_parity":
                a, b = text.rstrip("=").split("+")
                want = int((int(a) + int(b)) % 2 == 0)
            elif name == "greater":
                a, b = text.rstrip("?").split(">")
                assert len(a) == len(b)
                want = int(int(a) > int(b))
            else:
                pairs, q = text.rstrip("?").split(";")
                want = int(q in {p.split(":")[0] for p in pairs.split(",")})
            assert label == want, (text, label)


def test_downstream_splits_disjoint_deterministic_and_both_labels():
    task = make_task("key_present")
    train = {_text(task, ex) for ex in task.examples("train", 0, limit=300)}
    val = [ex for ex in task.examples("validation", 0, limit=200)]
    assert not train & {_text(task, ex) for ex in val}
    again = list(make_task("key_present").examples("validation", 0, limit=200))
    assert val == again
    share = np.mean([task.label_of(ex) for ex in val])
    assert 0.35 < share < 0.65


# ---- layouts ---------------------------------------------------------------------------------------
def test_classification_layout_has_no_mask_and_pools_the_sep():
    task = make_task("sum_parity")
    ex = next(task.examples("validation", 0))
    n = ex.inputs.size
    for arch in ("encoder", "decoder", "prefix_lm"):
        b = FinetuneFormatter(arch, 24, "last", tuple(task.label_ids), task.tokenizer.vocab_size)([[ex]], 2)
        m = b["main"]
        np.testing.assert_array_equal(m["inputs"][0, :n + 2], np.concatenate([[vocab.BOS], ex.inputs, [vocab.SEP]]))
        assert not (m["inputs"] == vocab.MASK).any()
        assert m["pool_index"][0] == n + 1 and m["inputs"][0, m["pool_index"][0]] == vocab.SEP
        np.testing.assert_array_equal(b["row_weights"], [1, 0])
        assert b["labels"][0] == task.label_of(ex)
        if arch == "prefix_lm":
            assert m["prefix_mask"][0, :n + 2].all() and not m["prefix_mask"][0, n + 2:].any()
    b = FinetuneFormatter("encdec", 24, "last", tuple(task.label_ids), task.tokenizer.vocab_size)([[ex]], 1)
    np.testing.assert_array_equal(b["main"]["enc_inputs"][0, :n], ex.inputs)
    assert b["main"]["inputs"][0, 0] == vocab.BOS and b["main"]["segment_ids"][0].sum() == 1


def test_first_token_head_is_refused_for_the_causal_decoder():
    with pytest.raises(ValueError, match="finetune.head='first': not available for arch='decoder'"):
        FinetuneFormatter("decoder", 24, "first", (21, 22), 64)


# ---- the loss --------------------------------------------------------------------------------------
def _tiny_model(arch="decoder", seed=0):
    from archcmp.model.config import ModelConfig
    from archcmp.model.models import build_model

    cfg = ModelConfig(arch=arch, vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=24)
    return cfg, build_model(cfg, seed)


def _batches(arch, head, aux, n=8, seed=0):
    task = make_task("sum_parity")
    rows = [[ex] for ex in task.examples("train", seed, limit=n)]
    fmt = FinetuneFormatter(arch, 24, head, tuple(int(t) for t in task.label_ids), 64, aux=aux)
    return task, fmt(rows, n, np.random.default_rng(seed))


@pytest.mark.parametrize("head", ["last", "generate"])
def test_aux_weight_zero_equals_plain_finetuning(head):
    import jax
    import optax

    from archcmp.model.objectives import mean_loss
    from archcmp.training.finetune import build, make_loss

    cfg, model = _tiny_model()
    _, with_aux = _batches("decoder", head, aux=True)
    plain = {k: v for k, v in with_aux.items() if k != "aux"}
    gd_b, gd_h, params = build(model, cfg, head, 2, 0)
    grad = jax.value_and_grad(lambda p, b, loss: loss(p, b, None), has_aux=True)
    (l0, s0), g0 = grad(params, with_aux, make_loss(gd_b, gd_h, head, "decoder", 0.0))
    (lp, sp), gp = grad(params, plain, make_loss(gd_b, gd_h, head, "decoder", 0.0))
    assert float(s0["lm_loss"]) > 0  # the auxiliary term was computed, with weight 0
    assert float(l0) == float(lp)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), g0, gp)
    # weight 0.5: the plain loss + 0.5 x the LM loss of the aux batch, computed here independently
    (l5, _), g5 = grad(params, with_aux, make_loss(gd_b, gd_h, head, "decoder", 0.5))
    from flax import nnx

    a = with_aux["aux"]
    lm, _ = mean_loss(nnx.merge(gd_b, params["backbone"])(a), a["targets"], a["weights"])
    np.testing.assert_allclose(float(l5), float(lp) + 0.5 * float(lm), rtol=1e-6)
    assert optax.tree.norm(jax.tree.map(lambda x, y: x - y, g5, gp)) > 0


@pytest.mark.parametrize("arch,head", [("decoder", "last"), ("encoder", "first"), ("encdec", "mean"),
                                       ("prefix_lm", "mean")])
def test_classifier_head_loss_falls_on_a_learnable_task(arch, head):
    import jax
    import optax

    from archcmp.training.finetune import build, make_loss, make_step

    cfg, model = _tiny_model(arch)
    # learnable toy labels: the class is the parity of the last operand digit (a function of the input)
    task, batch = _batches(arch, head, aux=False, n=32)
    gd_b, gd_h, params = build(model, cfg, head, 2, 0)
    loss = make_loss(gd_b, gd_h, head, arch, 0.0)
    tx = optax.adam(3e-3)
    step = make_step(loss, tx, train_backbone=True)
    state = {"params": params, "opt_state": tx.init(params)}
    first = float(loss(state["params"], batch, None)[0])
    np.testing.assert_allclose(first, np.log(2), atol=0.1)  # a near-zero head: chance
    for _ in range(60):
        state, ms = step(state, batch, None)
    last = float(loss(state["params"], batch, None)[0])
    assert last < 0.5 * first, (first, last)
    assert float(ms["correct"]) / float(ms["rows"]) > 0.8
    del jax


# ---- the run: start weights, identity, resume/skip, config errors ------------------------------------
def _source_cfg(run_dir: Path):
    from omegaconf import OmegaConf

    from archcmp.training.trainer import train
    from hydra_cfg import TINY, compose_cfg

    cfg = compose_cfg(["arch=decoder", *TINY])
    train(cfg, run_dir, on_accept=lambda d: (Path(d, ".hydra").mkdir(parents=True, exist_ok=True),
                                             OmegaConf.save(cfg, Path(d, ".hydra", "config.yaml"), resolve=True)))
    return run_dir


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return _source_cfg(tmp_path_factory.mktemp("src") / "decoder-src")


def _raw_checkpoint(run_dir: Path, step: int):
    """The saved arrays of a checkpoint, read with orbax directly (no model, no target)."""
    from archcmp.training.checkpoint import Checkpointer

    with Checkpointer(run_dir / "checkpoints", keep=None) as ck:
        state, _ = ck.restore(step=step, target=None)
    return state["params"]


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_finetuned_model_starts_from_exactly_the_source_weights(source, tmp_path):
    from flax import nnx

    from archcmp.loading.run import load_run
    from archcmp.training.finetune import build
    from archcmp.training.trainer import train
    from hydra_cfg import compose_cfg

    raw = _raw_checkpoint(source, 4)
    loaded = load_run(source, 4)
    _, _, params = build(loaded.model, loaded.config, "last", 2, 0)
    want = _leaves(raw)
    got = _leaves(nnx.to_pure_dict(params["backbone"]))
    assert len(want) == len(got) > 5
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    # through a whole fine-tuned run with a frozen backbone: the saved backbone is still the source's
    cfg = compose_cfg([*FT, "arch=decoder", f"finetune.from={source}", "finetune.train_backbone=false"])
    summary = train(cfg, tmp_path / "ft")
    assert summary["status"] == "complete" and summary["finetune"]["source_step"] == 4
    saved = _raw_checkpoint(tmp_path / "ft", 6)  # {"backbone", "head"}
    for a, b in zip(want, _leaves(saved["backbone"])):
        np.testing.assert_array_equal(a, b)
    init_head = _leaves(nnx.to_pure_dict(params["head"]))  # build(..., seed 0): the run's own head init
    assert any(not np.array_equal(a, b) for a, b in zip(init_head, _leaves(saved["head"])))  # the head learned


def test_finetune_run_identity_resume_and_skip(source, tmp_path):
    from archcmp.training.identity import RunRefused
    from archcmp.training.trainer import train
    from hydra_cfg import compose_cfg

    args = [*FT, "arch=decoder", f"finetune.from={source}", "finetune.aux_lm_weight=0.5"]
    run = tmp_path / "ft"
    s1 = train(compose_cfg(args), run)
    assert s1["status"] == "complete" and 0 <= s1["eval_accuracy"] <= 1
    assert s1["accuracy_over_chance"] == pytest.approx(s1["eval_accuracy"] - s1["majority_baseline"])
    ident = json.loads((run / "identity.json").read_text())["settings"]
    assert ident["finetune"]["source"]["step"] == 4 and len(ident["finetune"]["source"]["hash"]) == 16
    assert "from" not in ident["finetune"] and ident["finetune"]["aux_lm_weight"] == 0.5
    assert train(compose_cfg(args), run)["skipped"] is True
    with pytest.raises(RunRefused, match=r"finetune.aux_lm_weight: 0.5 -> 0\)"):
        train(compose_cfg([*args, "finetune.aux_lm_weight=0"]), run)
    with pytest.raises(RunRefused, match=r"finetune.source.step: 4 -> 2"):  # another starting checkpoint
        train(compose_cfg([*args, "finetune.step=2"]), run)


def test_finetune_resume_continues_bit_exactly(source, tmp_path):
    from archcmp.training.trainer import train
    from hydra_cfg import compose_cfg

    args = [*FT, "arch=decoder", f"finetune.from={source}", "finetune.head=mean"]
    full = train(compose_cfg(args), tmp_path / "full")
    part = tmp_path / "part"
    train(compose_cfg([*args, "train.checkpoint_every=3"]), part)
    # keep only the step-3 checkpoint and drop the summary: the state a kill after step 3 leaves
    import shutil

    shutil.rmtree(part / "checkpoints" / "6")
    (part / "summary.json").unlink()
    resumed = train(compose_cfg(args), part)
    assert resumed["resumed_from"] == 3
    assert resumed["eval_accuracy"] == full["eval_accuracy"] and resumed["eval_loss"] == full["eval_loss"]
    assert resumed["data_fingerprint"] == full["data_fingerprint"]
    for a, b in zip(_leaves(_raw_checkpoint(part, 6)), _leaves(_raw_checkpoint(tmp_path / "full", 6))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("head", ["mean", "generate"])
def test_load_run_reads_a_finetuned_run(source, tmp_path, head):
    """load_run on a fine-tuned run: the saved backbone and head, a forward pass whose accuracy on
    the run's own held-out examples is the accuracy the run recorded, and its activations."""
    from flax import nnx

    from archcmp import hidden_states, load_run
    from archcmp.data import eval_examples
    from archcmp.loading.finetuned import classify
    from archcmp.training.trainer import train
    from hydra_cfg import compose_cfg

    run = tmp_path / "ft"
    summary = train(compose_cfg([*FT, "arch=decoder", f"finetune.from={source}", f"finetune.head={head}"]), run)
    loaded = load_run(run)
    assert loaded.info["step"] == 6 and loaded.info["finetune"]["head"] == head
    saved = _raw_checkpoint(run, 6)
    got = _leaves(nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param)))
    assert len(got) == len(_leaves(saved["backbone"])) > 5
    for a, b in zip(_leaves(saved["backbone"]), got):
        np.testing.assert_array_equal(a, b)
    source_model = load_run(source, 4).model  # the backbone was fine-tuned: not the source's weights
    assert any(not np.array_equal(a, b) for a, b in
               zip(_leaves(nnx.to_pure_dict(nnx.state(source_model, nnx.Param))), got))
    task = make_task("sum_parity")
    held = eval_examples(task, "validation", 24, 16, seed=0)
    labels = np.array([task.label_of(ex) for ex in held])
    logits = classify(loaded, held)
    assert logits.shape == (16, 2) and np.isfinite(logits).all()
    acc = float(np.mean(np.argmax(logits, axis=1) == labels))
    if head == "generate":  # the run's argmax is over the whole vocabulary, ours over the two labels
        assert loaded.head is None and acc >= summary["eval_accuracy"] - 1e-9
    else:
        for a, b in zip(_leaves(saved["head"]), _leaves(nnx.to_pure_dict(nnx.state(loaded.head)))):
            np.testing.assert_array_equal(a, b)
        assert acc == pytest.approx(summary["eval_accuracy"])
        z = logits - logits.max(axis=1, keepdims=True)
        nll = -(z[np.arange(16), labels] - np.log(np.exp(z).sum(axis=1)))
        assert float(nll.mean()) == pytest.approx(summary["eval_loss"], rel=1e-4)
    texts = [task.tokenizer.decode(ex.inputs) for ex in held[:4]]  # text in, the same rows out
    np.testing.assert_allclose(classify(loaded, texts), logits[:4], rtol=1e-5, atol=1e-6)
    states = hidden_states(loaded, texts)["stack"]
    src_states = hidden_states(load_run(source, 4), texts)["stack"]
    assert len(states) == 4 and states[0].shape[0] == loaded.config.n_layers + 1
    assert states[0].shape[-1] == loaded.config.d_model and np.isfinite(states[0]).all()
    assert not np.allclose(states[0][-1], src_states[0][-1])  # the fine-tuned backbone's own activations
    with pytest.raises(ValueError, match="fine-tuned run"):
        load_run(run, 0)
    with pytest.raises(ValueError, match="not a fine-tuned run"):
        classify(load_run(source, 4), texts)


@pytest.mark.parametrize("override,message", [
    ("finetune.head=first", "finetune.head='first': not available for arch='decoder'"),
    ("finetune.aux_lm_weight=-1", "finetune.aux_lm_weight=-1: must be a non-negative number"),
    ("finetune.head=cls", "finetune.head='cls': choose one of ['last', 'mean', 'first', 'generate']"),
    ("finetune.from=/nonexistent/run", "finetune.from='/nonexistent/run': not a run directory"),
])
def test_bad_finetune_config_is_one_line_exit_2(source, tmp_path, override, message):
    from train_procs import train_cli

    args = [*FT, "arch=decoder", f"finetune.from={source}", override, f"hydra.run.dir={tmp_path / 'run'}"]
    proc = train_cli(args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_group_source_maps_member_seeds(tmp_path):
    from archcmp.model.config import ConfigError
    from archcmp.training.finetune import source_dir

    group = tmp_path / "dec-s0"
    for seed in (0, 1, 2):
        (group / f"dec-s{seed}").mkdir(parents=True)
        (group / f"dec-s{seed}" / "summary.json").write_text("{}")
    (group / "ensemble.json").write_text(json.dumps({"members": ["dec-s0", "dec-s1", "dec-s2"], "seeds": [0, 1, 2]}))
    assert source_dir(str(group), 1) == group / "dec-s1"
    assert source_dir(str(group / "dec-s2"), 0) == group / "dec-s2"  # a single run serves every seed
    with pytest.raises(ConfigError, match=r"has no member with seed=5"):
        source_dir(str(group), 5)


def test_identity_of_plain_runs_is_unchanged_and_finetune_identity_holds_the_source():
    from archcmp.training.finetune import with_source
    from archcmp.training.identity import identity_of

    base = {"seed": 0, "arch": {"name": "encoder", "objective": "mlm", "mlm_replacement": "bert"},
            "finetune": {"from": None, "step": None, "head": "last", "aux_lm_weight": 0.0, "train_backbone": True}}
    # the settings added here leave a plain run's identity as it was before they existed
    assert identity_of(base) == {"seed": 0, "arch": {"name": "encoder", "objective": "mlm"}}
    masked = {**base, "arch": {**base["arch"], "mlm_replacement": "mask"}}
    assert identity_of(masked)["arch"]["mlm_replacement"] == "mask"
    ft = {**base, "finetune": {**base["finetune"], "from": "/some/path"}}
    ident = identity_of(with_source(ft, {"hash": "abc", "step": 4, "exact": True}))
    assert ident["finetune"]["source"] == {"hash": "abc", "step": 4, "exact": True}
    assert "from" not in ident["finetune"]  # the same source reached by another path is the same run


def test_analysis_names_methods_and_writes_the_seed_evidence(tmp_path):
    import pandas as pd

    from archcmp.analysis.finetune.cli import run_cli

    def fake(name, arch, head, aux, src_obj, repl, seed, acc):
        d = tmp_path / "runs" / name / f"s{seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({
            "objective": "finetune", "status": "complete", "task": "greater", "arch": arch, "seed": seed,
            "finetune": {"head": head, "aux_lm_weight": aux, "train_backbone": True, "source_objective": src_obj,
                         "source_mlm_replacement": repl},
            "eval_accuracy": acc, "majority_baseline": 0.5, "accuracy_over_chance": acc - 0.5, "eval_loss": 0.6,
            "data_fingerprint": f"fp{seed}"}))

    for seed, acc in enumerate([0.6, 0.7, 0.8]):
        fake("a", "encoder", "first", 0.0, "mlm", "mask", seed, acc)
        fake("b", "decoder", "last", 0.5, "task", "bert", seed, acc - 0.1)
        fake("c", "decoder", "generate", 0.0, "task", "bert", seed, acc)
    assert run_cli([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    seeds = pd.read_csv(tmp_path / "out" / "seeds.csv")
    assert set(seeds.group) == {"encoder/first+always_mask", "decoder/last+aux0.5", "decoder/generate"}
    mask_free = seeds[seeds.metric == "mask_free_accuracy"]
    assert set(mask_free.group) == {"encoder/first+always_mask", "decoder/last+aux0.5"}  # generate: no mask-free row
    over = seeds[(seeds.metric == "accuracy_over_chance") & (seeds.group == "decoder/last+aux0.5")]
    np.testing.assert_allclose(sorted(over.value), [0.0, 0.1, 0.2], atol=1e-6)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| greater | encoder/first+always_mask | 3 | 0.700 ± 0.248 |" in table  # t(0.975, 2) * 0.1 / sqrt(3)
    assert (tmp_path / "out" / "finetune.png").stat().st_size > 1000


def test_analysis_pretrain_gain_4x_pairs_checkpoints_by_seed(tmp_path):
    """Runs fine-tuned from a quarter of the pre-training steps get ``@pre<step>``; pretrain_gain_4x
    is the primary classifier's accuracy from the last checkpoint minus from that one, per seed."""
    import pandas as pd

    from archcmp.analysis.finetune.cli import run_cli

    def fake(arch, head, step, seed, acc):
        d = tmp_path / "runs" / f"{arch}-{head}-{step}" / f"s{seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({
            "objective": "finetune", "status": "complete", "task": "key_present", "arch": arch, "seed": seed,
            "finetune": {"head": head, "aux_lm_weight": 0.0, "source_step": step, "source_objective": "task"},
            "eval_accuracy": acc, "majority_baseline": 0.5, "accuracy_over_chance": acc - 0.5, "eval_loss": 0.6,
            "data_fingerprint": f"fp{seed}"}))

    for seed in range(3):
        fake("decoder", "last", 600, seed, 0.9)
        fake("decoder", "last", 150, seed, 0.6 + 0.1 * seed)  # gains 0.3, 0.2, 0.1
        fake("decoder", "mean", 600, seed, 0.8)               # not the primary head: no gain row
        fake("encoder", "first", 600, seed, 0.7)
        fake("encoder", "first", 300, seed, 0.5)              # not a quarter of 600: no gain row
    assert run_cli([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    seeds = pd.read_csv(tmp_path / "out" / "seeds.csv")
    assert {"decoder/last", "decoder/last@pre150", "decoder/mean", "encoder/first", "encoder/first@pre300"} \
        <= set(seeds.group)
    gain = seeds[seeds.metric == "pretrain_gain_4x"].sort_values("seed")
    assert list(gain.group) == ["decoder"] * 3
    np.testing.assert_allclose(gain.value, [0.3, 0.2, 0.1], atol=1e-9)
    assert (tmp_path / "out" / "curves.png").stat().st_size > 1000
