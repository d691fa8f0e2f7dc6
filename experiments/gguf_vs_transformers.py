"""archcmp's GGUF import against transformers' own GGUF loader on the same file (issue 19).

transformers reads a ``.gguf`` file itself (``from_pretrained(dir, gguf_file=NAME)``): it
dequantises every tensor to torch float32 and undoes llama.cpp's q/k row order with its own code.
Both models then read the same token ids (the texts of the rank_pretrained experiment, one text a
row, no padding on transformers' side) and this prints:

* whether the two tokenizers (ours built from the GGUF metadata with ``tokenizers``, transformers'
  converted by transformers) give the same ids on every text;
* max |archcmp - transformers| of the logits, the hidden states (embeddings, every block output,
  the final norm) and the attention probabilities, and the scales they are relative to (max |logit|,
  max |hidden|: SmolLM2's residual stream carries a few very large activations);
* the mean next-token loss of both on the texts (a real LM reads Shakespeare far below the
  ln(vocab) of a uniform guess).

Needs the ``bench`` and ``gguf`` extras and ``accelerate`` (transformers' GGUF loader asks for it).  Run:
    python experiments/gguf_vs_transformers.py .cache/pretrained/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        experiments/results/rank_pretrained/texts.txt --json experiments/results/rank_pretrained/gguf_vs_transformers.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def next_token_loss(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean cross-entropy (nats) of ids[1:] under logits[:-1]."""
    z = logits[:-1] - logits[:-1].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].mean())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("gguf", type=Path)
    p.add_argument("texts", type=Path)
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from archcmp import attention, hidden_states, load_pretrained, logits

    texts = [t.strip() for t in args.texts.read_text().splitlines() if t.strip()]
    t0 = time.perf_counter()
    ours = load_pretrained(args.gguf)
    our_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = AutoModelForCausalLM.from_pretrained(args.gguf.parent, gguf_file=args.gguf.name, dtype=torch.float32,
                                               attn_implementation="eager").eval()
    ref_seconds = time.perf_counter() - t0
    ref_tok = AutoTokenizer.from_pretrained(args.gguf.parent, gguf_file=args.gguf.name)

    ids = [ours.encode(t) for t in texts]
    same_ids = all(list(map(int, a)) == ref_tok(t, add_special_tokens=True)["input_ids"] for a, t in zip(ids, texts))
    batch = ours.batch(texts)
    lg, hs, at = logits(ours.model, batch), hidden_states(ours.model, batch)["stack"], attention(ours.model, batch)["self"]
    d_logits = d_hidden = d_attn = scale = hidden_scale = 0.0
    loss_ours, loss_ref = [], []
    with torch.no_grad():
        for i, x in enumerate(ids):
            out = ref(torch.as_tensor(x[None], dtype=torch.long), output_hidden_states=True, output_attentions=True)
            r_logits = out.logits[0].numpy()
            r_hidden = np.stack([h[0].numpy() for h in out.hidden_states])  # [L + 1, n, D]
            r_attn = np.stack([a[0].numpy() for a in out.attentions])        # [L, H, n, n]
            d_logits = max(d_logits, float(np.abs(lg[i] - r_logits).max()))
            d_hidden = max(d_hidden, float(np.abs(hs[i] - r_hidden).max()))
            d_attn = max(d_attn, float(np.abs(at[i] - r_attn).max()))
            scale = max(scale, float(np.abs(r_logits).max()))
            hidden_scale = max(hidden_scale, float(np.abs(r_hidden).max()))
            loss_ours.append(next_token_loss(lg[i], x))
            loss_ref.append(next_token_loss(r_logits, x))
    result = {"file": args.gguf.name, "texts": len(texts), "tokens": int(sum(map(len, ids))),
              "same_token_ids": same_ids, "max_abs_logits": d_logits, "max_abs_hidden": d_hidden,
              "max_abs_attention": d_attn, "logit_scale": scale, "relative_logits": d_logits / scale,
              "hidden_scale": hidden_scale, "relative_hidden": d_hidden / hidden_scale,
              "loss_archcmp": float(np.mean(loss_ours)), "loss_transformers": float(np.mean(loss_ref)),
              "uniform_loss": float(np.log(ours.config.vocab_size)),
              "load_seconds_archcmp": our_seconds, "load_seconds_transformers": ref_seconds}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
