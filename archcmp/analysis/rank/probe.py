"""The rank probe of one model: its fixed probe batch (the same held-out examples for every
architecture, or given texts), the captured attention of every checkpoint step, and the rank metrics
and rank-collapse residuals as long frames (:func:`analyze_run` for a training run,
:func:`analyze_pretrained` for an imported checkpoint). Used by ``archcmp-analyze rank``
(:mod:`archcmp.analysis.rank.cli`).
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from archcmp.loading.run import RunInfo, restore_params, saved_steps
from archcmp.model.archs import arch_spec


class TaskCache:
    """``make_task`` once per (name, params): Shakespeare loads and tokenises its text."""

    def __init__(self):
        self._tasks: dict[str, Any] = {}

    def get(self, name: str, params: dict):
        from archcmp.data import make_task

        key = json.dumps([name, params], sort_keys=True, default=str)
        if key not in self._tasks:
            self._tasks[key] = make_task(name, **params)
        return self._tasks[key]


def probe_batch(run: RunInfo, examples: int, tasks: TaskCache, texts: list[str] | None = None) -> tuple[dict, str, int]:
    """(batch, data fingerprint of its examples, number of examples) for ``run``: the task's first
    validation examples, or ``texts`` (one a row, in the run's task layout) when given."""
    from archcmp.data import eval_batches, fingerprint
    from archcmp.loading.loaded import format_texts

    tcfg = run.config["task"]
    task = tasks.get(run.summary.get("task") or tcfg["name"], dict(tcfg.get("params") or {}))
    T = int(tcfg["seq_len"])
    enc_len = arch_spec(run.arch).encoder_len(T, int(tcfg.get("enc_len") or T))
    if texts is not None:
        from archcmp.data.formatters import make_formatter

        batch = format_texts(make_formatter(run.arch, T, enc_len), task.tokenizer.encode, texts)
        return batch, texts_fingerprint(texts), len(texts)
    batches, exs = eval_batches(task, "validation", run.arch, T, examples, examples, seed=0, enc_len=enc_len)
    if not exs:
        raise ValueError(f"{run.run_dir}: no validation example fits task.seq_len={T}")
    return batches[0], fingerprint(exs), len(exs)


# ----------------------------------------------------------------------------- per run
def texts_fingerprint(texts: list[str]) -> str:
    """Fingerprint of a list of probe texts (equal across models probed on the same file)."""
    import hashlib

    return "texts:" + hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]


def probe_states(graphdef, states, batch: dict, arch: str, name: str, norm: str = "l1inf") -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Rank metrics and rank collapse of one model structure at several parameter states.

    ``states`` yields ``(step, state)`` (restoring lazily); spectra are kept for the first and last
    step. -> (attention metrics, collapse, timings). The columns ``step`` first; the caller adds
    the model's description columns with :func:`finish_frames`.
    """
    from flax import nnx

    from archcmp.analysis.common import capture as cap_mod

    probe_fn = cap_mod.make_probe(graphdef)
    attn_frames, coll_frames, steps = [], [], []
    t_metrics = t_restore = 0.0
    states = iter(states)
    while True:
        tr = time.perf_counter()
        item = next(states, None)
        t_restore += time.perf_counter() - tr
        if item is None:
            break
        step, state = item
        steps.append(step)
        m = nnx.merge(graphdef, state)
        cap, variant_hidden = cap_mod.probe(m, batch, probe_fn, state)
        if not all(np.isfinite(v).all() for v in cap.attention.values()):
            warnings.warn(f"{name} step {step}: non-finite attention probabilities", RuntimeWarning)
        tm = time.perf_counter()
        df = cap_mod.capture_metrics(cap, batch, arch, keep_spectra=True)
        t_metrics += time.perf_counter() - tm
        df.insert(0, "step", step)
        attn_frames.append(df)
        coll = cap_mod.collapse_from_hidden(variant_hidden, batch, norm)
        coll.insert(0, "step", step)
        coll_frames.append(coll)
    # singular spectra only at the first and last step (memory)
    attn_frames[1:-1] = [df.drop(columns=["sv"], errors="ignore") for df in attn_frames[1:-1]]
    attn = pd.concat(attn_frames, ignore_index=True)
    coll = pd.concat(coll_frames, ignore_index=True)
    return attn, coll, {"steps": steps, "metric_seconds": t_metrics, "restore_seconds": t_restore}


def finish_frames(attn: pd.DataFrame, coll: pd.DataFrame, meta: dict) -> None:
    """Prefix the model's description columns (``meta``) and derived sign/logdet columns, in place."""
    for frame in (attn, coll):
        for i, (k, v) in enumerate(meta.items()):
            frame.insert(i, k, v)
    attn["abs_logdet_diff"] = attn["logdet_diff"].abs()
    tri = attn["is_triangular"].astype(bool)  # exact det > 0 there: a generic sign != +1 is an LU failure
    attn["sign_mismatch"] = np.where(tri, (attn["slogdet_sign"] != 1).astype(float), np.nan)


def analyze_run(run: RunInfo, examples: int, tasks: TaskCache, steps: str = "all", norm: str = "l1inf",
                texts: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Metrics of every step of one run.  -> (attention metrics, rank collapse, info)."""
    from flax import nnx

    from archcmp.training.checkpoint import Checkpointer
    from archcmp.model.models import build_model

    t0 = time.perf_counter()
    batch, fp, n_ex = probe_batch(run, examples, tasks, texts)
    graphdef, init_state = nnx.split(build_model(run.model_cfg, run.seed))
    saved = saved_steps(run)
    wanted = [0] + saved
    if steps != "all":
        keep = {int(s) for s in steps.split(",")}
        wanted = [s for s in wanted if s in keep]
    ck = Checkpointer(run.run_dir / "checkpoints", keep=None) if saved else None
    states = ((s, init_state if s == 0 else restore_params(ck, run, s, init_state)) for s in wanted)
    try:
        attn, coll, timing = probe_states(graphdef, states, batch, run.arch, run.name, norm)
    finally:
        if ck is not None:
            ck.close()
    meta = {"run": run.name, "arch": run.arch, "size": run.summary.get("size"), "n_heads": run.model_cfg.n_heads,
            "head_size": run.model_cfg.head_size, "d_model": run.model_cfg.d_model, "label": run.label,
            "heads_tag": run.heads_tag}
    finish_frames(attn, coll, meta)
    info = {**meta, "seed": run.seed, "run_dir": str(run.run_dir), "steps": wanted, "saved_steps": saved, "examples": n_ex, "fingerprint": fp,
            "matrices": len(attn), "metric_seconds": timing["metric_seconds"],
            "restore_seconds": timing["restore_seconds"],
            "seconds": time.perf_counter() - t0, "eval_loss": run.summary.get("eval_loss"),
            "params": run.summary.get("params_total"), "status": run.summary.get("status"),
            "final_step": max(wanted)}
    return attn, coll, info


PRETRAINED_STEP = 1  # the imported parameters; step 0 is a fresh initialisation of the same config


def analyze_pretrained(directory: Path, texts: list[str], norm: str = "l1inf") -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Metrics of an imported checkpoint on ``texts`` (step 1) beside a random initialisation of the
    same architecture (step 0, seed 0), like a run's init -> trained.  -> (attention, collapse, info)."""
    import jax
    from flax import nnx

    from archcmp.model.accounting import count_params
    from archcmp.model.models import build_model
    from archcmp.loading.pretrained import load_pretrained

    t0 = time.perf_counter()
    loaded = load_pretrained(directory)
    cfg = loaded.config
    batch = loaded.batch(texts)
    graphdef, state = nnx.split(loaded.model)
    init_state = jax.jit(lambda: nnx.split(build_model(cfg, 0))[1])()
    name = loaded.info["name"]
    attn, coll, timing = probe_states(graphdef, [(0, init_state), (PRETRAINED_STEP, state)], batch, cfg.arch, name, norm)
    heads_tag = f"h{cfg.n_heads}x{cfg.head_size}"
    meta = {"run": name, "arch": cfg.arch, "size": name, "n_heads": cfg.n_heads, "head_size": cfg.head_size,
            "d_model": cfg.d_model, "label": f"{name} ({loaded.info['model_type']}, {cfg.arch}) {heads_tag}",
            "heads_tag": heads_tag}
    finish_frames(attn, coll, meta)
    info = {**meta, "seed": 0, "run_dir": None, "steps": timing["steps"], "saved_steps": [PRETRAINED_STEP], "examples": len(texts),
            "fingerprint": texts_fingerprint(texts), "matrices": len(attn),
            "metric_seconds": timing["metric_seconds"], "restore_seconds": loaded.info["load_seconds"],
            "seconds": time.perf_counter() - t0, "eval_loss": None, "params": count_params(cfg).total,
            "status": "pretrained", "final_step": PRETRAINED_STEP}
    return attn, coll, info


def read_texts(path: Path) -> list[str]:
    """One text a line; blank lines skipped."""
    texts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not texts:
        raise ValueError(f"--texts {path}: no non-blank line")
    return texts
