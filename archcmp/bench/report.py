"""The markdown report of archcmp-bench: machine and versions, one table per section, and the
hand-written notes below :data:`~archcmp.bench.common.NOTES_MARKER` kept across rewrites."""
from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import jax

from archcmp.bench.common import NOTES_MARKER, Plan, n_cores


def _fmt_int(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def _mb(x: int | None) -> str:
    return "—" if x is None else f"{x / 2**20:,.0f}"


def train_table(rows: list[dict]) -> list[str]:
    head = ("| arch | size | params ours / HF | ours tok/s | HF eager tok/s | HF compile tok/s | "
            "ours / best HF | MFU ours | peak mem MB ours / eager / compile | compile s ours / torch |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        v = r["variants"]

        def tok(name: str) -> str:
            if name in v:
                return _fmt_int(v[name]["tokens_per_s"])
            return r["missing"].get(name, "—")

        hf_params = next((v[n]["n_params"] for n in ("HF eager", "HF compile") if n in v), None)
        mem = " / ".join(_mb(v[n]["peak_rss_above"]) if n in v else "—" for n in ("archcmp", "HF eager", "HF compile"))
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        mfu = v["archcmp"]["mfu"]
        tc = v.get("HF compile", {}).get("compile_seconds")
        lines.append(
            f"| {r['arch']} | {r['size']} | {r['params_ours']:,} / {_fmt_int(hf_params)} | {tok('archcmp')} | "
            f"{tok('HF eager')} | {tok('HF compile')} | {ratio} | "
            f"{'—' if mfu is None else f'{100 * mfu:.1f}%'} | {mem} | "
            f"{r['compile_ours']:.1f} / {'—' if tc is None else f'{tc:.1f}'} |")
    return lines


def compile_table(results: dict, plan: Plan) -> list[str]:
    layers = plan.compile_layers
    head = "| arch | mode | " + " | ".join(f"L={L} (s)" for L in layers) + f" | {layers[-1]}/{layers[0]} |"
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for arch in plan.compile_archs:
        for scan in (True, False):
            cells = [results.get((arch, L, scan)) for L in layers]
            if any(c is None for c in cells):
                continue
            vals = " | ".join(f"{c['total']:.2f}" for c in cells)
            lines.append(f"| {arch} | {'scan' if scan else 'loop'} | {vals} | "
                         f"{cells[-1]['total'] / cells[0]['total']:.2f}× |")
    return lines


def decode_table(rows: list[dict]) -> list[str]:
    head = ("| arch | size | params | batch | new tokens | cached tok/s | uncached tok/s | cached / uncached | "
            "same tokens |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['size']} | {r['n_params']:,} | {r['batch']} | {r['cached']['steps']} | "
                     f"{r['cached']['tokens_per_s']:,.0f} | {r['uncached']['tokens_per_s']:,.1f} | "
                     f"{r['speedup']:.1f}× | {'yes' if r['same_tokens'] else 'NO'} |")
    return lines


def peak_table(res: dict) -> list[str]:
    lines = ["| library | n | GFLOP/s (median) | all repeats |", "|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['lib']} | {r['n']} | {r['flops'] / 1e9:.1f} | "
                     + ", ".join(f"{x / 1e9:.0f}" for x in r["all"]) + " |")
    return lines


def machine_lines(torch_info: str) -> list[str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import flax
    import jaxlib
    import optax

    return [
        f"- CPU: {cpu}; os.cpu_count()={os.cpu_count()}, usable cores={n_cores()} (machine shared with other jobs)",
        f"- platform: {platform.platform()}, python {platform.python_version()}",
        f"- jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, optax {optax.__version__}; "
        f"devices {jax.devices()}",
        f"- {torch_info}" + (f"; torch threads {_torch_threads()}" if torch_info.startswith("torch ") else ""),
        f"- GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')} (archcmp-bench sets huge-page malloc; "
        "every variant runs in this one process)",
    ]


def _torch_threads() -> str:
    import torch

    return f"{torch.get_num_threads()} intra-op / {torch.get_num_interop_threads()} inter-op"


def write_report(path: Path | None, plan: Plan, results: dict, torch_info: str, command: str) -> str:
    """Markdown report; keeps hand-written notes below :data:`NOTES_MARKER` of an existing file."""
    la, lb = results["load_before"], results["load_after"]
    doc = [
        "# archcmp-bench",
        "",
        f"Command: `{command}` (wall time {results['wall']:.0f} s)",
        "",
        "Machine:",
        "",
        *machine_lines(torch_info),
        f"- load average (1/5/15 min) before: {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, "
        f"after: {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}",
        "",
    ]
    if "mfu" in results:
        doc += ["## Dense float32 matmul peak", "",
                "n×n @ n×n, alternating jnp (XLA) and torch; the best median is the MFU denominator.", "",
                *peak_table(results["mfu"]), "",
                f"**Peak: {results['mfu']['peak'] / 1e9:.1f} GFLOP/s.**", ""]
    if "train" in results:
        rows = results["train"]
        b = rows[0] if rows else None
        doc += ["## Training step: forward + backward + AdamW", "",
                (f"Synthetic batches of {b['batch']} rows × {b['seq']} tokens (encdec: {b['seq']} encoder + "
                 f"{b['seq']} decoder tokens per row, both counted in tokens/s), vocabulary {plan.vocab}, float32. "
                 if b else "") +
                "archcmp runs its real step (`steps.make_train_step`: loss, grads, global-norm clipping 1.0, "
                "AdamW with weight decay on matrices, finiteness guard) on the project optimizer. "
                "HF: the same shape in `transformers` (GPT-2 for decoder; GPT-2 with a 4-D boolean "
                "causal-or-prefix mask for prefix_lm; BERT MLM for encoder; T5 for encdec), sdpa attention, "
                "dropout 0, the same weighted cross-entropy over `weights`, `clip_grad_norm_` 1.0 and fused "
                "AdamW (decay on matrices); `HF compile` wraps forward + loss in `torch.compile` "
                "(backward compiled by AOTAutograd). Our models follow each HF model's style: GPT-2/BERT "
                "learned positions, LayerNorm (BERT post-norm), tanh-GELU; T5 relative bias, RMSNorm, ReLU. "
                "HF has biases in every linear layer (GPT-2, BERT) and BERT's MLM transform, so its "
                "parameter counts differ slightly.",
                "",
                "Medians over rounds of alternating variants (the order rotates every round; rounds × steps "
                "per round below). tokens/s = positions per step / "
                "median step time. MFU = our model FLOP/s (exact count of `accounting.train_flops_per_row`: "
                "every matmul, 3× forward) / the measured matmul peak. Peak memory = most the process's "
                "resident set grew above its level at the start of that variant's steps (VmHWM after "
                "malloc_trim and a high-water reset): activations, gradients and temporaries, not the "
                "resident weights and optimizer state. Compile: our lower + XLA compile; torch: the first "
                "`torch.compile`d step.", "",
                *train_table(rows), ""]
        detail = ["Rounds × steps per round: " + ", ".join(
            f"{s}: {plan.rounds[s]}×{plan.steps_per_round[s]}" for s in plan.sizes) + ".", ""]
        detail += ["| arch | size | variant | median step (s) | all steps (s) | loss after | XLA peak estimate MB "
                   "| other processes' CPU share |",
                   "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            for name, v in r["variants"].items():
                xm = r["xla_memory"] if name == "archcmp" else None
                xla = "—" if xm is None else _mb(xm["arguments"] + xm["outputs"] - xm["aliased"] + xm["temps"])
                detail.append(f"| {r['arch']} | {r['size']} | {name} | {v['step_seconds']:.3f} | "
                              + ", ".join(f"{t:.2f}" for t in v["times"]) + f" | {v['final_loss']:.3f} | {xla} | "
                              + ("—" if v["others_cpu"] is None else f"{100 * v['others_cpu']:.0f}%") + " |")
        doc += detail + [""]
    if "compile" in results:
        doc += ["## Compile time of the training step", "",
                f"Lower + XLA compile of a fresh `jax.jit` of our training step, shape of size "
                f"{plan.compile_size} with the depth varied (encdec: layers per stack), "
                f"{'median of ' + str(plan.compile_reps) + ' repeats' if plan.compile_reps > 1 else 'one measurement'} "
                "per cell, scan and loop alternating. Target: 24 layers ≤ 1.5× 2 layers with scan.", "",
                *compile_table(results["compile"], plan), ""]
    if "decode" in results:
        doc += ["## Decoding with and without the KV cache", "",
                f"Greedy `decode.run_lm` (the jitted while-loop), batch {plan.decode_batch}, prompt "
                f"{plan.decode_prompt} tokens (+BOS/SEP), {plan.decode_new} new tokens (EOS disabled so every run "
                "generates all of them), alternating cached / uncached, compile excluded. Uncached recomputes the "
                "whole fixed-size buffer each step. Target: cached ≥ 5× uncached.", "",
                *decode_table(results["decode"]), ""]
    if "ensemble" in results:
        from archcmp.bench.ensemble import report

        doc += report(results["ensemble"], plan)
    text = "\n".join(doc)
    if path is None:
        return text
    notes = ""
    if path.exists():
        old = path.read_text()
        if NOTES_MARKER in old:
            notes = old[old.index(NOTES_MARKER):]
    if not notes:
        notes = NOTES_MARKER + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n" + notes)
    return text


