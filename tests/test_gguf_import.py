"""llama.cpp GGUF files load into the same model as the safetensors checkpoint they were made from.

The tiny Llama golden (tests/goldens/pretrained/llama: grouped-query attention, untied head, and
transformers' logits on a padded batch) is written here as GGUF with ``gguf.GGUFWriter`` the way
llama.cpp's converter lays it out: GGUF names, and the rows of each q/k head reordered so that the
rotary pairs are adjacent (HF row ``j * K/2 + i`` -> GGUF row ``2i + j``, written below as an
explicit index list, not with the importer's reshape). Quantised copies (Q8_0, F16) are checked
against a numpy dequantisation written here from the format's definition.
"""
from __future__ import annotations

import json
from pathlib import Path

import gguf  # part of the test extra: a missing package fails here, loudly
import numpy as np
import pytest

from archcmp import attention, load_pretrained, logits
from archcmp.loading.gguf_file import unpermute_rotary
from archcmp.loading.pretrained import CheckpointError

GOLDEN = Path(__file__).parent / "goldens" / "pretrained" / "llama"
HF_CFG = json.loads((GOLDEN / "config.json").read_text())
HEADS, KV_HEADS, HEAD = HF_CFG["num_attention_heads"], HF_CFG["num_key_value_heads"], HF_CFG["head_dim"]
# Hugging Face name -> GGUF name (llama.cpp's tensor names for the Llama architecture)
NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
         "lm_head.weight": "output.weight"}
for _i in range(HF_CFG["num_hidden_layers"]):
    for _hf, _g in [("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                    ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                    ("post_attention_layernorm", "ffn_norm"), ("mlp.gate_proj", "ffn_gate"),
                    ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")]:
        NAMES[f"model.layers.{_i}.{_hf}.weight"] = f"blk.{_i}.{_g}.weight"


def golden_tensors() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(GOLDEN / "model.safetensors"))


def llamacpp_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head of K rows, HF row j*K/2 + i goes to row 2i + j."""
    k = w.shape[0] // n_heads
    order = [h * k + j * (k // 2) + i for h in range(n_heads) for i in range(k // 2) for j in range(2)]
    return w[order]


def q8_0_roundtrip(w: np.ndarray) -> np.ndarray:
    """Q8_0 by its definition: blocks of 32 along a row, scale d = max|x| / 127 stored as float16,
    codes round(x / d) in int8; the value read back is float16(d) * code."""
    blocks = w.reshape(-1, 32).astype(np.float32)
    d = np.abs(blocks).max(-1, keepdims=True) / 127
    codes = np.round(blocks / np.where(d == 0, 1, d))
    return (d.astype(np.float16).astype(np.float32) * codes).reshape(w.shape)


def write_gguf(path: Path, tensors: dict[str, np.ndarray], types: dict[str, str] | None = None,
               arch: str = "llama", extra_meta=None, tokenizer: dict | None = None, drop=(), extra_tensors=None) -> Path:
    """Write HF-named ``tensors`` as a llama.cpp-style GGUF (``types``: GGUF name -> F32/F16/Q8_0)."""
    Q = gguf.GGMLQuantizationType
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(HF_CFG["num_hidden_layers"])
    w.add_context_length(HF_CFG["max_position_embeddings"])
    w.add_embedding_length(HF_CFG["hidden_size"])
    w.add_feed_forward_length(HF_CFG["intermediate_size"])
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HEAD)
    w.add_rope_freq_base(HF_CFG["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(HF_CFG["rms_norm_eps"])
    for key, value in (extra_meta or {}).items():
        w.add_string(key, value)
    if tokenizer:
        w.add_tokenizer_model(tokenizer["model"])
        w.add_tokenizer_pre(tokenizer["pre"])
        w.add_token_list(tokenizer["tokens"])
        w.add_token_merges(tokenizer["merges"])
        w.add_token_types(tokenizer["types"])
    for hf_name, value in tensors.items():
        name = NAMES[hf_name]
        if name in drop:
            continue
        value = np.asarray(value, np.float32)
        if name.endswith("attn_q.weight"):
            value = llamacpp_rows(value, HEADS)
        elif name.endswith("attn_k.weight"):
            value = llamacpp_rows(value, KV_HEADS)
        kind = (types or {}).get(name, "F32")
        if kind == "F16":
            w.add_tensor(name, value.astype(np.float16))
        elif kind == "F32":
            w.add_tensor(name, value)
        else:
            w.add_tensor(name, gguf.quants.quantize(value, getattr(Q, kind)), raw_dtype=getattr(Q, kind))
    for name, (data, kind) in (extra_tensors or {}).items():
        w.add_tensor(name, data, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def golden_batch() -> tuple[dict, dict]:
    e = dict(np.load(GOLDEN / "expected.npz"))
    ids, mask = e["input_ids"], e["attention_mask"]
    pos = np.where(mask > 0, np.arange(ids.shape[1]), 0).astype(np.int32)
    return {"inputs": ids, "segment_ids": mask, "positions": pos}, e


def test_rotary_rows_literal():
    """Two heads of K = 4 rows: GGUF rows [0..7] are HF rows [0, 2, 1, 3 | 4, 6, 5, 7]."""
    w = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    assert unpermute_rotary(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert llamacpp_rows(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]  # the pairing is its own inverse at K=4
    w6 = np.arange(12, dtype=np.float32)[:, None]  # two heads of K = 6: HF (j, i) -> GGUF 2i + j
    assert llamacpp_rows(w6, 2)[:6, 0].tolist() == [0, 3, 1, 4, 2, 5]
    np.testing.assert_array_equal(unpermute_rotary(llamacpp_rows(w6, 2), 2), w6)


def test_f32_gguf_equals_safetensors_golden_and_transformers(tmp_path):
    f = write_gguf(tmp_path / "tiny.gguf", golden_tensors())
    batch, e = golden_batch()
    g, s = load_pretrained(f), load_pretrained(GOLDEN)
    assert g.info["format"] == "gguf" and g.info["tensor_types"] == {"F32": 21}
    assert g.config == s.config
    lg, ls = logits(g.model, batch), logits(s.model, batch)
    for i, n in enumerate(e["attention_mask"].sum(1)):
        np.testing.assert_allclose(lg[i], ls[i], atol=1e-6, rtol=0)
        np.testing.assert_allclose(lg[i], e["logits"][i, :n], atol=1e-4, rtol=0)  # transformers' own numbers
    assert np.ptp(e["logits"]) > 0.5


def test_rows_left_in_gguf_order_would_be_caught(tmp_path):
    """Without the q/k reordering the logits move far beyond the tolerance (the test above is not vacuous)."""
    tensors = golden_tensors()
    for name in list(tensors):
        if name.endswith("q_proj.weight"):  # pre-undo the writer's reordering: the file then holds HF rows
            tensors[name] = unpermute_rotary(tensors[name], HEADS)
    f = write_gguf(tmp_path / "wrong.gguf", tensors)
    batch, e = golden_batch()
    lg = logits(load_pretrained(f).model, batch)
    assert max(np.abs(lg[0] - e["logits"][0]).max(), np.abs(lg[1] - e["logits"][1, :6]).max()) > 1e-2


def test_quantised_tensors_are_dequantised(tmp_path):
    """Q8_0 (q, k, v, gate, up, embedding) and F16 (down, whose rows of 40 are no multiple of 32):
    the same logits as a safetensors copy holding the dequantised values computed here."""
    from safetensors.numpy import save_file

    tensors = golden_tensors()
    types, expected = {}, {}
    for hf, w in tensors.items():
        name = NAMES[hf]
        if name.endswith(("attn_q.weight", "attn_k.weight", "attn_v.weight", "ffn_gate.weight", "ffn_up.weight")) \
                or name == "token_embd.weight":
            types[name], expected[hf] = "Q8_0", q8_0_roundtrip(w)
        elif name.endswith("ffn_down.weight"):
            types[name], expected[hf] = "F16", w.astype(np.float16).astype(np.float32)
        else:
            expected[hf] = w
    f = write_gguf(tmp_path / "q.gguf", tensors, types)
    ref = tmp_path / "ref"
    ref.mkdir()
    save_file(expected, str(ref / "model.safetensors"))
    (ref / "config.json").write_text((GOLDEN / "config.json").read_text())
    batch, e = golden_batch()
    g = load_pretrained(f)
    assert g.info["tensor_types"] == {"Q8_0": 11, "F16": 2, "F32": 8}
    lg, lr = logits(g.model, batch), logits(load_pretrained(ref).model, batch)
    for i in range(2):
        np.testing.assert_allclose(lg[i], lr[i], atol=1e-6, rtol=0)
    # quantisation really changed the weights: the logits left the float32 golden's
    assert np.abs(lg[0] - e["logits"][0]).max() > 1e-4


def _bpe_tokenizer():
    """A byte-level BPE trained here (single digits split first, like SmolLM's) + its GGUF metadata."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    text = ["O Romeo, Romeo! wherefore art thou Romeo?", "Deny thy father and refuse thy name;",
            "In 1597 the first quarto was printed, 2 years later the second.", "what's in a name? that which we call"]
    tok.train_from_iterator(text * 20, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    meta = {"model": "gpt2", "pre": "smollm", "tokens": [t for t, _ in vocab], "merges": merges,
            "types": [3 if t == "<|endoftext|>" else 1 for t, _ in vocab]}
    return tok, meta


def test_tokenizer_from_gguf_metadata(tmp_path):
    ref, meta = _bpe_tokenizer()
    tensors = golden_tensors()
    rng = np.random.default_rng(0)
    V = len(meta["tokens"])
    tensors["model.embed_tokens.weight"] = rng.normal(0, 0.1, (V, 32)).astype(np.float32)
    tensors["lm_head.weight"] = rng.normal(0, 0.1, (V, 32)).astype(np.float32)
    loaded = load_pretrained(write_gguf(tmp_path / "tok.gguf", tensors, tokenizer=meta))
    texts = ["O Romeo, Romeo!", "In 2024, 13 names.", "  thy   name;\nwhat's<|endoftext|>", "Ünïcode: ☃ 42"]
    for t in texts:
        assert loaded.encode(t).tolist() == ref.encode(t).ids, t
        assert loaded.tokenizer.decode(loaded.encode(t).tolist(), skip_special_tokens=False) == t
    assert ref.encode("2024").ids == [ref.token_to_id(c) for c in "2024"]  # digits one by one
    assert loaded.encode("x<|endoftext|>").tolist()[-1] == 0  # the control token is not split
    att = attention(loaded, texts[:2])["self"]
    assert [a.shape[-1] for a in att] == [len(ref.encode(t).ids) for t in texts[:2]]


# ----------------------------------------------------------------------------- errors
def test_unsupported_architecture_is_named(tmp_path):
    f = write_gguf(tmp_path / "a.gguf", golden_tensors(), arch="gpt2")
    with pytest.raises(CheckpointError, match=r"general.architecture='gpt2' is not supported; supported: \['llama'\]"):
        load_pretrained(f)


def test_undequantisable_type_is_named(tmp_path):
    Q = gguf.GGMLQuantizationType
    block, size = gguf.GGML_QUANT_SIZES[Q.Q8_1]
    data = np.zeros((40, 32 // block * size), np.uint8)  # ffn_up: [40, 32] as Q8_1 bytes
    f = write_gguf(tmp_path / "q81.gguf", golden_tensors(), drop=("blk.0.ffn_up.weight",),
                   extra_tensors={"blk.0.ffn_up.weight": (data, Q.Q8_1)})
    with pytest.raises(CheckpointError, match=r"tensor 'blk.0.ffn_up.weight' has quantisation type Q8_1"):
        load_pretrained(f)


def test_missing_and_unknown_tensors_are_named(tmp_path):
    f = write_gguf(tmp_path / "m.gguf", golden_tensors(), drop=("blk.1.ffn_up.weight",))
    with pytest.raises(CheckpointError, match=r"tensor 'blk.1.ffn_up.weight' missing \(general.architecture='llama'\)"):
        load_pretrained(f)
    bias = np.zeros(32, np.float32)
    f = write_gguf(tmp_path / "b.gguf", golden_tensors(),
                   extra_tensors={"blk.0.attn_q.bias": (bias, gguf.GGMLQuantizationType.F32)})
    with pytest.raises(CheckpointError, match=r"tensor 'blk.0.attn_q.bias' has no archcmp counterpart"):
        load_pretrained(f)


def test_rope_scaling_is_refused(tmp_path):
    f = write_gguf(tmp_path / "r.gguf", golden_tensors(), extra_meta={"llama.rope.scaling.type": "linear"})
    with pytest.raises(CheckpointError, match=r"llama.rope.scaling.type='linear' is not supported"):
        load_pretrained(f)


def test_bad_files_are_named(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match=r"junk.gguf: not a readable GGUF file"):
        load_pretrained(junk)
    with pytest.raises(CheckpointError, match=r"model.safetensors: a checkpoint file must be .gguf"):
        load_pretrained(GOLDEN / "model.safetensors")
    d = tmp_path / "two"
    d.mkdir()
    write_gguf(d / "a.gguf", golden_tensors())
    write_gguf(d / "b.gguf", golden_tensors())
    with pytest.raises(CheckpointError, match=r"2 .gguf files \(a.gguf, b.gguf\); name one"):
        load_pretrained(d)


def test_unsupported_tokenizer_is_named_on_encode(tmp_path):
    _, meta = _bpe_tokenizer()
    tensors = golden_tensors()
    f = write_gguf(tmp_path / "t.gguf", tensors, tokenizer={**meta, "model": "llama", "tokens": meta["tokens"][:96],
                                                            "types": meta["types"][:96]})
    loaded = load_pretrained(f)  # the model loads: it takes batches of ids
    with pytest.raises(CheckpointError, match=r"tokenizer.ggml.model='llama' is not supported .*pass a batch of ids"):
        loaded.encode("hello")
    batch, e = golden_batch()
    np.testing.assert_allclose(logits(loaded.model, batch)[0], e["logits"][0], atol=1e-4, rtol=0)


def test_readme_gguf_recipe_runs_as_written(tmp_path, capsys):
    """The README's GGUF recipe, executed with only the file swapped (a tiny GGUF with a tokenizer)."""
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"<!-- recipe: load_pretrained gguf -->\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    _, meta = _bpe_tokenizer()
    tensors = golden_tensors()
    V = len(meta["tokens"])
    rng = np.random.default_rng(1)
    tensors["model.embed_tokens.weight"] = rng.normal(0, 0.1, (V, 32)).astype(np.float32)
    tensors["lm_head.weight"] = rng.normal(0, 0.1, (V, 32)).astype(np.float32)
    f = write_gguf(tmp_path / "tiny.gguf", tensors, tokenizer=meta)
    code, n = re.subn(r'load_pretrained\("[^"]*"', f"load_pretrained({str(f)!r}", code)
    assert n == 1
    exec(compile(code, "README:load_pretrained gguf", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed.startswith("gguf {'F32': 21} 2 (2, 4, ")
