"""Read a llama.cpp GGUF file as a Hugging Face style Llama checkpoint (config, float32 tensors, tokenizer).

GGUF (read with the ``gguf`` package, extra ``archcmp[gguf]``) keeps the hyper-parameters as
``<arch>.*`` metadata keys, the tokenizer as ``tokenizer.ggml.*`` keys and each weight as a block
-quantised or float tensor. :func:`read_gguf` turns a file of ``general.architecture = llama``
(Llama, SmolLM, TinyLlama-style models) into what :func:`archcmp.loading.pretrained.import_tensors`
takes for a safetensors directory, so the same Llama mapping builds the archcmp model:

- the metadata becomes a ``config.json``-like dict (``model_type = "llama"``);
- every tensor is dequantised to float32 (``gguf.quants.dequantize``) and renamed to the Hugging
  Face name; GGUF lists dimensions fastest first, so a ``[in, out]`` GGUF shape is the numpy
  (= torch ``Linear``) ``[out, in]`` array;
- llama.cpp's converter reorders the rows of each head of ``attn_q`` / ``attn_k`` so that the
  rotary pairs are adjacent rows (ggml's default RoPE rotates pairs ``(2i, 2i+1)``), where
  Hugging Face's Llama rotates the two halves of a head (``(i, i + K/2)``). Within one head of
  size K, GGUF row ``2i + j`` holds the HF row ``j * K/2 + i``; :func:`unpermute_rotary` undoes it;
- ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE: tokens + merges) becomes a ``tokenizers``
  tokenizer with the pre-tokenizer that ``tokenizer.ggml.pre`` names.

Anything the Llama mapping cannot express exactly (another architecture, rotary scaling, partial
rotary, experts, a tensor with no counterpart, a quantisation type ``gguf`` cannot dequantise) is
a one-line :class:`~archcmp.loading.errors.CheckpointError` naming the key, tensor or type.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from archcmp.loading.errors import CheckpointError

ARCHITECTURES = ("llama",)

# GGUF tensor name (``{i}`` = layer) -> Hugging Face Llama name (without the ``model.`` prefix)
LLAMA_TENSORS = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.mlp.down_proj.weight",
}
OPTIONAL_TENSORS = ("output.weight",)  # absent: the head is tied to token_embd

# tokenizer.ggml.pre -> whether digits are split one by one before the GPT-2 byte-level regex
# (llama.cpp's pre-tokenizer table: "gpt2" is the GPT-2 regex alone; "smollm", "starcoder",
# "refact" put a single-digit split in front of it)
PRE_TOKENIZERS = {"gpt2": False, "smollm": True, "starcoder": True, "refact": True}
TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


@dataclass
class GGUFCheckpoint:
    """What :func:`read_gguf` returns: a Hugging Face style config and tensors, and the tokenizer
    (``None`` with the reason in ``tokenizer_problem`` when the file's tokenizer is not supported)."""

    path: Path
    config: dict
    tensors: dict[str, np.ndarray]
    tokenizer: Any
    tokenizer_problem: str | None
    info: dict = field(default_factory=dict)


def _open(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise CheckpointError(f"{path}: reading GGUF needs the gguf package (pip install 'archcmp[gguf]')") from err
    try:
        return GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - the reader raises ValueError/struct errors on bad files
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from err


def read_metadata(reader) -> dict[str, Any]:
    """Every metadata key -> its Python value (strings, numbers, lists)."""
    return {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}


def dequantize(path: Path, tensor) -> np.ndarray:
    """One GGUF tensor -> float32 numpy array in numpy order (slowest dimension first)."""
    from gguf import GGMLQuantizationType, quants

    kind = tensor.tensor_type
    if kind in (GGMLQuantizationType.I8, GGMLQuantizationType.I16, GGMLQuantizationType.I32,
                GGMLQuantizationType.I64, GGMLQuantizationType.F64):
        raise CheckpointError(f"{path}: tensor {tensor.name!r} has type {kind.name}, not a float or "
                              "block-quantised weight type archcmp dequantises")
    try:
        values = quants.dequantize(np.asarray(tensor.data), kind)
    except NotImplementedError as err:
        raise CheckpointError(f"{path}: tensor {tensor.name!r} has quantisation type {kind.name}, which "
                              f"the gguf package cannot dequantise") from err
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF: fastest dimension first
    return np.ascontiguousarray(values.reshape(shape), dtype=np.float32)


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row order of a q/k projection ``[n_heads * K, D]``: per head, GGUF row
    ``2i + j`` -> HF row ``j * K/2 + i`` (adjacent rotary pairs -> rotate-half halves)."""
    rows, d = w.shape
    k = rows // n_heads
    return w.reshape(n_heads, k // 2, 2, d).transpose(0, 2, 1, 3).reshape(rows, d)


def _scalar(path: Path, meta: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = meta.get(key, default)
    if value is None:
        raise CheckpointError(f"{path}: metadata key {key!r} missing")
    if isinstance(value, list):
        raise CheckpointError(f"{path}: metadata {key}={value[:4]}... varies per layer, which archcmp does not support")
    return value


def _float32(value: float) -> float:
    """A float32 metadata value as the shortest decimal that reads back to it (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def llama_config(path: Path, meta: Mapping[str, Any], arch: str, has_output: bool, vocab: int) -> dict:
    """GGUF ``<arch>.*`` metadata -> a Hugging Face Llama ``config.json`` dict."""
    def get(key, default=None):
        return _scalar(path, meta, f"{arch}.{key}", default)

    d, heads = int(get("embedding_length")), int(get("attention.head_count"))
    kv = int(get("attention.head_count_kv", heads))
    head_dim = int(get("attention.key_length", d // heads))
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise CheckpointError(f"{path}: {arch}.attention.value_length={get('attention.value_length')} differs "
                              f"from key_length={head_dim}, which archcmp does not support")
    rotary = int(get("rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise CheckpointError(f"{path}: {arch}.rope.dimension_count={rotary} (partial rotary) is not supported; "
                              f"archcmp rotates the whole head ({head_dim})")
    scaling = get("rope.scaling.type", "none")
    if scaling != "none":
        raise CheckpointError(f"{path}: {arch}.rope.scaling.type={scaling!r} is not supported (archcmp handles ['none'])")
    experts = int(get("expert_count", 0))
    if experts:
        raise CheckpointError(f"{path}: {arch}.expert_count={experts} (mixture of experts) is not supported")
    return {"model_type": "llama", "vocab_size": vocab, "hidden_size": d,
            "num_hidden_layers": int(get("block_count")), "num_attention_heads": heads, "num_key_value_heads": kv,
            "head_dim": head_dim, "intermediate_size": int(get("feed_forward_length")),
            "max_position_embeddings": int(get("context_length", 2048)),
            "rope_theta": _float32(get("rope.freq_base", 10000.0)),
            "rms_norm_eps": _float32(get("attention.layer_norm_rms_epsilon")), "hidden_act": "silu",
            "tie_word_embeddings": not has_output}


def llama_tensors(path: Path, named: Mapping[str, Any], n_layers: int, heads: int, kv_heads: int) -> dict[str, np.ndarray]:
    """GGUF tensors -> Hugging Face Llama names, float32, q/k rows back in rotate-half order."""
    wanted: dict[str, str] = {}
    for gguf_name, hf_name in LLAMA_TENSORS.items():
        for i in (range(n_layers) if "{i}" in gguf_name else [None]):
            wanted[gguf_name.format(i=i)] = "model." + hf_name.format(i=i)
    extra = sorted(set(named) - set(wanted))
    if extra:
        raise CheckpointError(f"{path}: tensor {extra[0]!r} has no archcmp counterpart (general.architecture='llama'"
                              f"{f', {len(extra) - 1} more' if len(extra) > 1 else ''})")
    out: dict[str, np.ndarray] = {}
    for gguf_name, hf_name in wanted.items():
        if gguf_name not in named:
            if gguf_name in OPTIONAL_TENSORS:
                continue
            raise CheckpointError(f"{path}: tensor {gguf_name!r} missing (general.architecture='llama')")
        w = dequantize(path, named[gguf_name])
        if gguf_name.endswith("attn_q.weight"):
            w = unpermute_rotary(w, heads)
        elif gguf_name.endswith("attn_k.weight"):
            w = unpermute_rotary(w, kv_heads)
        out[hf_name] = w
    return out


def gguf_tokenizer(meta: Mapping[str, Any]) -> tuple[Any, str | None]:
    """``tokenizer.ggml.*`` -> (``tokenizers.Tokenizer``, None), or (None, why not)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        return None, f"tokenizer.ggml.model={kind!r} is not supported (archcmp builds ['gpt2'], byte-level BPE)"
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    if pre not in PRE_TOKENIZERS:
        return None, f"tokenizer.ggml.pre={pre!r} is not supported (archcmp handles {sorted(PRE_TOKENIZERS)})"
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    vocab = {t: i for i, t in enumerate(tokens)}
    if not tokens or len(vocab) != len(tokens):
        return None, "tokenizer.ggml.tokens is empty or repeats a token"
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges") or []]
    if any(len(m) != 2 for m in merges):
        return None, "tokenizer.ggml.merges holds an entry that is not two tokens separated by one space"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if PRE_TOKENIZERS[pre] else byte_level)
    tok.decoder = decoders.ByteLevel()
    types = list(meta.get("tokenizer.ggml.token_type") or [])
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == TOKEN_TYPE_CONTROL])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i, t in enumerate(types) if t == TOKEN_TYPE_USER_DEFINED])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{tokens[bos]} $A",
                                                           special_tokens=[(tokens[bos], int(bos))])
    return tok, None


def read_gguf(path: str | Path) -> GGUFCheckpoint:
    """A ``.gguf`` file -> :class:`GGUFCheckpoint` (Hugging Face Llama config and tensors, tokenizer)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    reader = _open(path)
    meta = read_metadata(reader)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: general.architecture={arch!r} is not supported; supported: {list(ARCHITECTURES)}")
    named = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in named:
        raise CheckpointError(f"{path}: tensor 'token_embd.weight' missing (general.architecture='llama')")
    vocab = int(named["token_embd.weight"].shape[1])  # GGUF shape [D, vocab]
    config = llama_config(path, meta, arch, "output.weight" in named, vocab)
    tensors = llama_tensors(path, named, config["num_hidden_layers"], config["num_attention_heads"],
                            config["num_key_value_heads"])
    tokenizer, problem = gguf_tokenizer(meta)
    if tokenizer is not None and tokenizer.get_vocab_size() != vocab:
        tokenizer, problem = None, (f"tokenizer.ggml.tokens has {tokenizer.get_vocab_size()} tokens, "
                                    f"the embedding {vocab} rows")
    info = {"gguf_name": meta.get("general.name"), "file_type": meta.get("general.file_type"),
            "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors))}
    return GGUFCheckpoint(path, config, tensors, tokenizer, problem, info)
