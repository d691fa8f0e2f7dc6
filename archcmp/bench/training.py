"""archcmp-bench sections ``mfu`` and ``train``: the machine's dense matmul peak, and our training step
against the Hugging Face model of the same shape (eager and ``torch.compile``), trained the same way."""
from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from archcmp.model.accounting import count_params, train_flops_per_row
from archcmp.bench.common import (HF_MODEL, INSTALL_HINT, RSS, Plan, alternate, bench_optim, log, make_batch,
                                  model_config, tokens_per_row)
from archcmp.model.config import ModelConfig
from archcmp.data import vocab
from archcmp.model.models import build_model
from archcmp.training.optim import make_optimizer
from archcmp.training.steps import make_train_step, split_microbatches
from archcmp.model.archs import arch_spec

# ---- our training step ---------------------------------------------------------------------------
class OursTrainer:
    """archcmp's real training step (``steps.make_train_step`` with the project optimizer)."""

    name = "archcmp"

    def __init__(self, cfg: ModelConfig, batch: dict[str, np.ndarray]):
        self.cfg = cfg
        model = build_model(cfg, seed=0)
        graphdef, params = nnx.split(model)
        self.n_params = int(sum(x.size for x in jax.tree.leaves(params)))
        tx = make_optimizer(bench_optim(), total_steps=10_000)
        self.state = {"params": params, "opt_state": tx.init(params)}
        self.batch = jax.device_put(split_microbatches(batch, 1))
        self.jitted = make_train_step(graphdef, tx, accum=1)
        t0 = time.perf_counter()
        lowered = self.jitted.lower(self.state, self.batch, None)
        t1 = time.perf_counter()
        self.compiled = lowered.compile()
        t2 = time.perf_counter()
        self.compile_seconds = t2 - t0
        self.lower_seconds = t1 - t0
        self.xla_memory = _xla_memory(self.compiled)
        self.last_loss = float("nan")

    def step(self) -> None:
        self.state, metrics = self.compiled(self.state, self.batch, None)
        jax.block_until_ready((self.state, metrics))
        self.last_loss = float(metrics["train_loss"])

    def close(self) -> None:
        self.state = self.batch = self.compiled = self.jitted = None


def _xla_memory(compiled) -> dict[str, int] | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    return {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
            "aliased": int(m.alias_size_in_bytes), "temps": int(m.temp_size_in_bytes)}


# ---- the torch side (optional) -------------------------------------------------------------------
def torch_status() -> tuple[bool, str]:
    """(available, versions or the reason it is not)."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return False, f"not installed ({exc.name or exc}); install with: {INSTALL_HINT}"
    return True, f"torch {torch.__version__}, transformers {transformers.__version__}"


def _hf_model(arch: str, cfg: ModelConfig):
    """The HF model of the same shape (dropout off, sdpa attention, tied embeddings)."""
    import transformers as tf

    common = dict(vocab_size=cfg.vocab_size, tie_word_embeddings=True)
    if arch_spec(arch).autoregressive and not arch_spec(arch).encoder_stack:  # GPT-2 (prefix_lm: with a prefix mask)
        conf = tf.GPT2Config(n_positions=cfg.max_len, n_embd=cfg.d_model, n_layer=cfg.n_layers,
                             n_head=cfg.n_heads, n_inner=cfg.d_ff, activation_function="gelu_pytorch_tanh",
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps,
                             **common)
        return tf.GPT2LMHeadModel(conf)
    if arch_spec(arch).mask_fill:
        conf = tf.BertConfig(hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                             num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff,
                             hidden_act="gelu_pytorch_tanh", max_position_embeddings=cfg.max_len,
                             type_vocab_size=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                             layer_norm_eps=cfg.norm_eps, **common)
        return tf.BertForMaskedLM(conf)
    conf = tf.T5Config(d_model=cfg.d_model, d_kv=cfg.head_size, d_ff=cfg.d_ff, num_layers=cfg.enc_layers,
                       num_decoder_layers=cfg.dec_layers, num_heads=cfg.n_heads,
                       relative_attention_num_buckets=cfg.rel_buckets,
                       relative_attention_max_distance=cfg.rel_max_distance, dropout_rate=0.0,
                       feed_forward_proj="relu", layer_norm_epsilon=cfg.norm_eps, decoder_start_token_id=vocab.BOS,
                       pad_token_id=vocab.PAD, **common)
    return tf.T5ForConditionalGeneration(conf)


class HFTrainer:
    """The same shape in Hugging Face ``transformers``, trained the same way: logits -> weighted
    token cross-entropy over ``weights`` (the same loss layout as ours) -> backward -> global-norm
    clipping -> AdamW (fused CPU kernel; weight decay on matrices only, like ours)."""

    def __init__(self, arch: str, cfg: ModelConfig, batch: dict[str, np.ndarray], compiled: bool):
        import torch

        self.name = "HF compile" if compiled else "HF eager"
        torch.manual_seed(0)
        self.model = _hf_model(arch, cfg).train()
        self.n_params = int(sum(p.numel() for p in self.model.parameters()))
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
        self.targets = t["targets"].long().reshape(-1)
        self.weights = t["weights"].reshape(-1)
        if arch_spec(arch).encoder_stack:
            self.kwargs = {"input_ids": t["enc_inputs"].long(), "decoder_input_ids": t["inputs"].long()}
        else:
            self.kwargs = {"input_ids": t["inputs"].long()}
        if arch_spec(arch).prompt_is_prefix:  # 4-D boolean mask, True = may attend: causal OR key in the prefix
            T = t["inputs"].shape[1]
            causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
            self.kwargs["attention_mask"] = (causal[None] | t["prefix_mask"][:, None, :])[:, None]
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]
        opt = bench_optim()
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": opt.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps, fused=True)
        self.clip = opt.clip_norm
        model, targets, weights, V = self.model, self.targets, self.weights, cfg.vocab_size

        def loss_fn(kwargs):
            logits = model(**kwargs).logits.float()
            losses = torch.nn.functional.cross_entropy(logits.reshape(-1, V), targets, reduction="none")
            return (losses * weights).sum() / weights.sum().clamp(min=1.0)

        self.loss_fn = torch.compile(loss_fn, dynamic=False) if compiled else loss_fn
        self.compile_seconds = float("nan")
        self.last_loss = float("nan")
        if compiled:
            t0 = time.perf_counter()
            self.step()  # compiles forward and backward graphs
            self.compile_seconds = time.perf_counter() - t0

    def step(self) -> None:
        import torch

        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.kwargs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip, foreach=True)
        self.opt.step()
        self.last_loss = float(loss.detach())

    def close(self) -> None:
        self.model = self.opt = self.loss_fn = None



def measure_matmul_peak(plan: Plan, have_torch: bool) -> dict[str, Any]:
    """Dense f32 matmul FLOP/s of this machine: jnp (XLA) and torch, n x n @ n x n, alternating."""
    res: dict[str, Any] = {"rows": []}
    fns: dict[str, Callable[[int], Callable[[], None]]] = {}

    def jax_mm(n: int):
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        f = jax.jit(jnp.matmul)
        f(a, b).block_until_ready()
        return lambda: f(a, b).block_until_ready()

    fns["jax"] = jax_mm
    if have_torch:
        import torch

        def torch_mm(n: int):
            a, b = torch.randn(n, n), torch.randn(n, n)
            c = torch.empty(n, n)
            torch.mm(a, b, out=c)
            return lambda: torch.mm(a, b, out=c)

        fns["torch"] = torch_mm
    best = 0.0
    for n in plan.matmul_sizes:
        runners = {name: make(n) for name, make in fns.items()}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(plan.matmul_reps):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            flops = 2.0 * n ** 3 / statistics.median(ts)
            best = max(best, flops)
            res["rows"].append({"lib": name, "n": n, "flops": flops, "all": [2.0 * n ** 3 / t for t in ts]})
            log(f"matmul peak: {name} n={n}: {flops / 1e9:.1f} GFLOP/s (median of {len(ts)})")
        del runners
    res["peak"] = best
    return res


def train_cell(arch: str, size: str, plan: Plan, have_torch: bool, torch_why: str, peak: float | None,
               rss: RSS) -> dict[str, Any]:
    B, T = plan.batch[size], plan.seq
    cfg = model_config(arch, size, plan.vocab, T)
    batch = make_batch(arch, B, T, plan.vocab, seed=1)
    label = f"train {arch} {size}"
    log(f"{label}: compiling archcmp step (B={B}, T={T})")
    ours = OursTrainer(cfg, batch)
    variants: list = [ours]
    missing: dict[str, str] = {}
    if have_torch and plan.torch:
        for compiled in (False, True):
            name = "HF compile" if compiled else "HF eager"
            try:
                if compiled:
                    log(f"{label}: torch.compile of the HF model (first step)")
                variants.append(HFTrainer(arch, cfg, batch, compiled))
            except Exception as exc:  # noqa: BLE001 - report, keep benchmarking the rest
                missing[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                log(f"{label}: {name} {missing[name]}")
    else:
        why = torch_why if plan.torch else "skipped (--no-torch)"
        missing = {"HF eager": why, "HF compile": why}
    for v in variants:  # warm-up: caches, allocator, lazy init (the compile variant already ran once)
        for _ in range(plan.warmup if v.name != "HF compile" else max(plan.warmup - 1, 0)):
            v.step()
    timings = alternate(variants, plan.rounds[size], plan.steps_per_round[size], rss, label)
    flops_step = B * train_flops_per_row(cfg, T, arch_spec(arch).encoder_len(T) or 0)
    tokens_step = B * tokens_per_row(arch, T)
    row: dict[str, Any] = {
        "arch": arch, "size": size, "batch": B, "seq": T, "tokens_per_step": tokens_step, "flops_per_step": flops_step,
        "params_ours": ours.n_params, "params_ours_formula": count_params(cfg).total,
        "compile_ours": ours.compile_seconds, "xla_memory": ours.xla_memory, "hf_model": HF_MODEL[arch],
        "variants": {}, "missing": missing,
    }
    for v in variants:
        t = timings[v.name]
        med = statistics.median(t["times"])
        row["variants"][v.name] = {
            "step_seconds": med, "tokens_per_s": tokens_step / med, "flops_per_s": flops_step / med,
            "mfu": (flops_step / med / peak) if peak else None, "peak_rss_above": t["peak"],
            "n_params": v.n_params, "compile_seconds": v.compile_seconds, "times": t["times"],
            "final_loss": v.last_loss,
            "others_cpu": statistics.median(t["others"]) if t["others"] else None,
        }
    hf = [row["variants"][n]["tokens_per_s"] for n in ("HF eager", "HF compile") if n in row["variants"]]
    row["best_hf"] = max(hf) if hf else None
    row["ratio"] = row["variants"]["archcmp"]["tokens_per_s"] / row["best_hf"] if hf else None
    for v in variants:
        v.close()
    del variants, ours
    gc.collect()
    return row


