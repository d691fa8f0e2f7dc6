"""Write the golden files of the pretrained-import equivalence tests (tests/goldens/pretrained/).

For each family (GPT-2, BERT, Llama with grouped-query attention, T5 v1.0 with ReLU and a tied
head, T5 v1.1 with gated GELU and an untied head) this builds a tiny, randomly initialised
Hugging Face ``transformers`` model, perturbs every parameter (norm scales and biases too, so
that a dropped bias or a swapped norm cannot pass), and saves

* ``config.json`` and ``model.safetensors`` -- what :func:`archcmp.load_pretrained` reads;
* ``expected.npz`` -- inputs (ids, attention mask) and transformers' outputs on them:
  logits, every hidden state and every attention probability matrix (eager attention);
* ``tokenizer.json`` (gpt2 only) -- a small word-level tokenizer, to test tokenizer loading.

Needs the ``bench`` extra (torch + transformers).  Run:  python experiments/make_pretrained_goldens.py
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "goldens" / "pretrained"
VOCAB = 96
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]


def configs():
    from transformers import BertConfig, GPT2Config, LlamaConfig, T5Config

    common = dict(vocab_size=VOCAB)
    return {
        "gpt2": GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
                           attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, **common),
        "bert": BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                           max_position_embeddings=16, type_vocab_size=2, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, **common),
        "llama": LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=40, max_position_embeddings=16, rope_theta=500.0, rms_norm_eps=1e-5,
                             tie_word_embeddings=False, **common),
        "t5": T5Config(d_model=32, d_kv=8, d_ff=40, num_layers=2, num_decoder_layers=3, num_heads=4,
                       relative_attention_num_buckets=8, relative_attention_max_distance=12, dropout_rate=0.0,
                       feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0, **common),
        "t5_gated": T5Config(d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                             relative_attention_max_distance=12, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                             tie_word_embeddings=False, decoder_start_token_id=0, **common),
    }


def build(name, cfg):
    import torch
    from transformers import BertForMaskedLM, GPT2LMHeadModel, LlamaForCausalLM, T5ForConditionalGeneration

    cls = {"gpt2": GPT2LMHeadModel, "bert": BertForMaskedLM, "llama": LlamaForCausalLM,
           "t5": T5ForConditionalGeneration, "t5_gated": T5ForConditionalGeneration}[name]
    cfg._attn_implementation = "eager"  # attention probabilities are returned
    model = cls(cfg).eval()
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and ("norm" in pname.lower() or "ln_" in pname):
                p.copy_(1.0 + 0.1 * noise if pname.endswith(("weight", "gamma")) else 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)  # biases
            else:
                p.copy_(0.15 * noise)
    return model


def inputs(name):
    rng = np.random.default_rng(7)
    ids = rng.integers(5, VOCAB, size=(2, 9)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0  # the second row ends in 3 padding tokens
    ids[1, 6:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if name == "bert":
        out["token_type_ids"] = (np.arange(9)[None, :] >= 4).astype(np.int64).repeat(2, 0)
    if name.startswith("t5"):
        dec = rng.integers(5, VOCAB, size=(2, 6)).astype(np.int64)
        dec[:, 0] = 0  # decoder start token
        out["decoder_input_ids"] = dec
    return out


def run(model, name, batch):
    import torch

    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    with torch.no_grad():
        res = model(**t, output_hidden_states=True, output_attentions=True, return_dict=True)
    out = {"logits": res.logits.numpy()}
    if name.startswith("t5"):
        groups = {"enc_hidden": res.encoder_hidden_states, "dec_hidden": res.decoder_hidden_states,
                  "enc_attn": res.encoder_attentions, "dec_attn": res.decoder_attentions,
                  "cross_attn": res.cross_attentions}
    else:
        groups = {"hidden": res.hidden_states, "attn": res.attentions}
    for key, seq in groups.items():
        out[key] = np.stack([s.numpy() for s in seq])  # [L(+1), ...]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def tokenizer_json(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    for name, cfg in configs().items():
        d = args.out / name
        d.mkdir(parents=True, exist_ok=True)
        model = build(name, cfg)
        for f in d.glob("*.safetensors"):
            f.unlink()
        model.save_pretrained(d, safe_serialization=True)
        (d / "generation_config.json").unlink(missing_ok=True)
        cfg_json = json.loads((d / "config.json").read_text())
        cfg_json.pop("transformers_version", None)
        (d / "config.json").write_text(json.dumps(cfg_json, indent=1, sort_keys=True) + "\n")
        batch = inputs(name)
        expected = run(model, name, batch)
        np.savez(d / "expected.npz", **{k: v.astype(np.int32) for k, v in batch.items()}, **expected)
        if name == "gpt2":
            tokenizer_json(d / "tokenizer.json")
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{name}: wrote {d} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
