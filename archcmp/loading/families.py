"""The checkpoint families archcmp imports (GPT-2, BERT, Llama, T5): for each ``model_type`` a
:class:`Family` that translates its config into a :class:`~archcmp.model.config.ModelConfig` and its
tensors into archcmp parameters (see :mod:`archcmp.loading.pretrained` for the table of what each
family's options express). Torch ``Linear`` weights are stored ``[out, in]``; GPT-2's ``Conv1D``
weights are ``[in, out]``; archcmp kernels are ``[in, ...out]`` with heads split out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from archcmp.loading.errors import CheckpointError
from archcmp.model.config import ModelConfig

Tensors = Mapping[str, np.ndarray]


class TensorSource:
    """Tensors by name, with the family's optional name prefixes (``transformer.``, ``bert.``,
    ``model.``) resolved, and a one-line error naming a missing tensor."""

    def __init__(self, tensors: Tensors, prefixes: tuple[str, ...], model_type: str, directory: Path):
        self.tensors, self.prefixes, self.model_type, self.directory = tensors, prefixes, model_type, directory
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return any(p + name in self.tensors for p in self.prefixes)

    def __call__(self, name: str) -> np.ndarray:
        for p in self.prefixes:
            if p + name in self.tensors:
                self.used.add(p + name)
                return np.asarray(self.tensors[p + name], np.float32)
        raise CheckpointError(f"{self.directory}: tensor {self.prefixes[0] + name!r} missing from the checkpoint "
                              f"(model_type={self.model_type!r})")


def _norm(get: TensorSource, name: str, bias: bool = True) -> dict[str, np.ndarray]:
    """LayerNorm ``weight``/``bias`` (old BERT files: ``gamma``/``beta``) -> {scale, bias}."""
    scale_name = f"{name}.weight" if get.has(f"{name}.weight") or not get.has(f"{name}.gamma") else f"{name}.gamma"
    out = {"scale": get(scale_name)}
    if bias:
        out["bias"] = get(f"{name}.bias" if scale_name.endswith("weight") else f"{name}.beta")
    return out


def _stack_layers(layers: list[dict]) -> dict:
    """A list of per-layer nested dicts -> one nested dict of arrays with a leading layer axis."""
    if isinstance(layers[0], dict):
        return {k: _stack_layers([layer[k] for layer in layers]) for k in layers[0]}
    return np.stack(layers)


def _heads(w_in_out: np.ndarray, n_heads: int) -> np.ndarray:
    """[D, H*K] -> [D, H, K]."""
    return w_in_out.reshape(w_in_out.shape[0], n_heads, -1)


def _attention(get: TensorSource, cfg: ModelConfig, names: Mapping[str, str], cross: bool = False,
               conv1d_fused: str | None = None) -> dict:
    """q/k/v/o tensors of one layer -> the archcmp attention parameters (fused or split layout).

    ``names`` maps q, k, v, o to torch ``Linear`` weight names (``[out, in]``); ``conv1d_fused``
    is GPT-2's fused ``[D, 3D]`` kernel instead.
    """
    H, G, K = cfg.n_heads, cfg.kv_heads, cfg.head_size
    out: dict[str, np.ndarray] = {}
    if conv1d_fused is not None:
        w = get(f"{conv1d_fused}.weight")  # [D, 3*H*K]
        out["qkv"] = w.reshape(w.shape[0], 3, H, K)
        out["qkv_bias"] = get(f"{conv1d_fused}.bias").reshape(3, H, K)
    else:
        q, k, v = (_heads(get(f"{names[n]}.weight").T, h) for n, h in (("q", H), ("k", G), ("v", G)))
        if cross or not cfg.fused_qkv:
            out["q"], out["kv"] = q, np.stack([k, v], axis=1)  # [D,H,K], [D,2,G,K]
        else:
            out["qkv"] = np.stack([q, k, v], axis=1)  # [D, 3, H, K]
        if cfg.use_bias:
            qb, kb, vb = (get(f"{names[n]}.bias").reshape(h, K) for n, h in (("q", H), ("k", G), ("v", G)))
            if "qkv" in out:
                out["qkv_bias"] = np.stack([qb, kb, vb])
            else:
                out["q_bias"], out["kv_bias"] = qb, np.stack([kb, vb])
    o = get(f"{names['o']}.weight")
    o = o if conv1d_fused is not None else o.T  # -> [H*K, D]
    out["out"] = o.reshape(H, K, -1)
    if cfg.use_bias:
        out["out_bias"] = get(f"{names['o']}.bias")
    return out


def _mlp(get: TensorSource, cfg: ModelConfig, wi: list[str], wo: str, conv1d: bool = False) -> dict:
    """MLP kernels: ``wi`` names (one, or gate then up for gated activations) and ``wo``."""
    def kernel(name):
        w = get(f"{name}.weight")
        return w if conv1d else w.T  # -> [in, out]

    out = {"wi": np.stack([kernel(n) for n in wi], axis=1), "wo": kernel(wo)}  # [D, n, F], [F, D]
    if cfg.use_bias:
        out["wi_bias"] = np.stack([get(f"{n}.bias") for n in wi])
        out["wo_bias"] = get(f"{wo}.bias")
    return out


def _get(hf: Mapping[str, Any], key: str, *fallbacks: str, default: Any = None, required: bool = True) -> Any:
    for k in (key, *fallbacks):
        if hf.get(k) is not None:
            return hf[k]
    if default is None and required:
        raise CheckpointError(f"config.json: key {key!r} missing")
    return default


def _activation(name: str, key: str) -> str:
    table = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_erf", "relu": "relu"}
    if name not in table:
        raise CheckpointError(f"config.json: {key}={name!r} is not supported; supported: {sorted(table)}")
    return table[name]


def _refuse(hf: Mapping[str, Any], key: str, allowed: tuple) -> None:
    if hf.get(key) not in allowed:
        raise CheckpointError(f"config.json: {key}={hf.get(key)!r} is not supported (archcmp handles {list(allowed)})")


def gpt2_config(hf: Mapping[str, Any]) -> ModelConfig:
    _refuse(hf, "scale_attn_by_inverse_layer_idx", (None, False))
    _refuse(hf, "scale_attn_weights", (None, True))
    d = _get(hf, "n_embd", "hidden_size")
    return ModelConfig(arch="decoder", vocab_size=_get(hf, "vocab_size"), d_model=d, n_layers=_get(hf, "n_layer"),
                       n_heads=_get(hf, "n_head"), d_ff=hf.get("n_inner") or 4 * d, max_len=_get(hf, "n_positions"),
                       pos_encoding="learned", norm="layernorm", norm_position="pre",
                       norm_eps=float(_get(hf, "layer_norm_epsilon", default=1e-5)),
                       activation=_activation(_get(hf, "activation_function", default="gelu_new"), "activation_function"),
                       tie_embeddings=bool(hf.get("tie_word_embeddings", True)), use_bias=True)


def gpt2_weights(get: TensorSource, cfg: ModelConfig) -> dict:
    layers = []
    for i in range(cfg.n_layers):
        p = f"h.{i}"
        layers.append({"self_norm": _norm(get, f"{p}.ln_1"), "mlp_norm": _norm(get, f"{p}.ln_2"),
                       "self_attn": _attention(get, cfg, {"o": f"{p}.attn.c_proj"}, conv1d_fused=f"{p}.attn.c_attn"),
                       "mlp": _mlp(get, cfg, [f"{p}.mlp.c_fc"], f"{p}.mlp.c_proj", conv1d=True)})
    params = {"embed": {"table": get("wte.weight")},
              "stack": {"positions": {"table": get("wpe.weight")}, "blocks": _stack_layers(layers),
                        "final_norm": _norm(get, "ln_f")}}
    if not cfg.tie_embeddings:
        params["head"] = {"kernel": get("lm_head.weight").T}
    return params


def bert_config(hf: Mapping[str, Any], has_mlm_head: bool) -> ModelConfig:
    _refuse(hf, "position_embedding_type", (None, "absolute"))
    return ModelConfig(arch="encoder", vocab_size=_get(hf, "vocab_size"), d_model=_get(hf, "hidden_size"),
                       n_layers=_get(hf, "num_hidden_layers"), n_heads=_get(hf, "num_attention_heads"),
                       d_ff=_get(hf, "intermediate_size"), max_len=_get(hf, "max_position_embeddings"),
                       pos_encoding="learned", norm="layernorm", norm_position="post",
                       norm_eps=float(_get(hf, "layer_norm_eps", default=1e-12)),
                       activation=_activation(_get(hf, "hidden_act", default="gelu"), "hidden_act"),
                       tie_embeddings=True, use_bias=True, type_vocab_size=int(hf.get("type_vocab_size") or 0),
                       embed_norm=True, head_transform=has_mlm_head, head_bias=has_mlm_head)


def bert_weights(get: TensorSource, cfg: ModelConfig) -> dict:
    layers = []
    for i in range(cfg.n_layers):
        p = f"encoder.layer.{i}"
        names = {"q": f"{p}.attention.self.query", "k": f"{p}.attention.self.key",
                 "v": f"{p}.attention.self.value", "o": f"{p}.attention.output.dense"}
        layers.append({"self_attn": _attention(get, cfg, names),
                       "self_norm": _norm(get, f"{p}.attention.output.LayerNorm"),
                       "mlp": _mlp(get, cfg, [f"{p}.intermediate.dense"], f"{p}.output.dense"),
                       "mlp_norm": _norm(get, f"{p}.output.LayerNorm")})
    embed = {"table": get("embeddings.word_embeddings.weight")}
    if cfg.type_vocab_size:
        embed["type_table"] = get("embeddings.token_type_embeddings.weight")
    params = {"embed": embed,
              "stack": {"positions": {"table": get("embeddings.position_embeddings.weight")},
                        "embed_norm": _norm(get, "embeddings.LayerNorm"), "blocks": _stack_layers(layers)}}
    if cfg.head_transform:
        t = "cls.predictions.transform"
        bias = "cls.predictions.bias" if get.has("cls.predictions.bias") else "cls.predictions.decoder.bias"
        params["head"] = {"dense": get(f"{t}.dense.weight").T, "dense_bias": get(f"{t}.dense.bias"),
                          "norm": _norm(get, f"{t}.LayerNorm"), "bias": get(bias)}
    return params


def _rope_theta(hf: Mapping[str, Any]) -> float:
    """RoPE base: ``rope_theta`` (transformers 4) or ``rope_parameters.rope_theta`` (5); only the
    plain ("default") RoPE is supported, no frequency scaling."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise CheckpointError(f"config.json: rope_type={kind!r} is not supported (archcmp handles ['default'])")
    return float(hf.get("rope_theta") or params.get("rope_theta") or 10000.0)


def llama_config(hf: Mapping[str, Any]) -> ModelConfig:
    _refuse(hf, "attention_bias", (None, False))
    _refuse(hf, "mlp_bias", (None, False))
    _refuse(hf, "hidden_act", (None, "silu"))
    heads = _get(hf, "num_attention_heads")
    kv = _get(hf, "num_key_value_heads", default=heads)
    return ModelConfig(arch="decoder", vocab_size=_get(hf, "vocab_size"), d_model=_get(hf, "hidden_size"),
                       n_layers=_get(hf, "num_hidden_layers"), n_heads=heads, head_dim=hf.get("head_dim"),
                       n_kv_heads=None if kv == heads else kv, d_ff=_get(hf, "intermediate_size"),
                       max_len=_get(hf, "max_position_embeddings", default=2048), pos_encoding="rope",
                       rope_theta=_rope_theta(hf), norm="rmsnorm", norm_position="pre",
                       norm_eps=float(_get(hf, "rms_norm_eps", default=1e-6)), activation="swiglu",
                       tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def llama_weights(get: TensorSource, cfg: ModelConfig) -> dict:
    layers = []
    for i in range(cfg.n_layers):
        p = f"layers.{i}"
        names = {n: f"{p}.self_attn.{n}_proj" for n in ("q", "k", "v", "o")}
        layers.append({"self_norm": _norm(get, f"{p}.input_layernorm", bias=False),
                       "self_attn": _attention(get, cfg, names),
                       "mlp_norm": _norm(get, f"{p}.post_attention_layernorm", bias=False),
                       "mlp": _mlp(get, cfg, [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"], f"{p}.mlp.down_proj")})
    params = {"embed": {"table": get("embed_tokens.weight")},
              "stack": {"blocks": _stack_layers(layers), "final_norm": _norm(get, "norm", bias=False)}}
    if not cfg.tie_embeddings:
        params["head"] = {"kernel": get("lm_head.weight").T}
    return params


_T5_MLP = {"relu": "relu", "gated-gelu": "geglu", "gated-silu": "swiglu"}


def t5_config(hf: Mapping[str, Any], has_lm_head: bool) -> ModelConfig:
    """T5 v1.0 ties the head and scales its input by d_model**-0.5; v1.1 has its own head, unscaled.
    transformers 5 writes ``scale_decoder_outputs`` and always ties; older files say
    ``tie_word_embeddings: false`` and carry ``lm_head.weight``."""
    tied = hf.get("tie_word_embeddings", True) is not False or not has_lm_head
    ff = _get(hf, "feed_forward_proj", default="relu")
    if ff not in _T5_MLP:
        raise CheckpointError(f"config.json: feed_forward_proj={ff!r} is not supported; supported: {sorted(_T5_MLP)}")
    layers = _get(hf, "num_layers")
    return ModelConfig(arch="encdec", vocab_size=_get(hf, "vocab_size"), d_model=_get(hf, "d_model"),
                       n_layers=layers, n_enc_layers=layers, n_dec_layers=_get(hf, "num_decoder_layers", default=layers),
                       n_heads=_get(hf, "num_heads"), head_dim=_get(hf, "d_kv"), d_ff=_get(hf, "d_ff"),
                       max_len=int(hf.get("n_positions") or 512), pos_encoding="relative",
                       rel_buckets=_get(hf, "relative_attention_num_buckets", default=32),
                       rel_max_distance=_get(hf, "relative_attention_max_distance", default=128), rel_causal=True,
                       scale_attention=False, norm="rmsnorm", norm_position="pre",
                       norm_eps=float(_get(hf, "layer_norm_epsilon", default=1e-6)), activation=_T5_MLP[ff],
                       tie_embeddings=tied,
                       tied_head_scale=tied and bool(hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))))


def t5_weights(get: TensorSource, cfg: ModelConfig) -> dict:
    def mlp(p):
        wi = [f"{p}.DenseReluDense.wi_0", f"{p}.DenseReluDense.wi_1"] if cfg.gated else [f"{p}.DenseReluDense.wi"]
        return _mlp(get, cfg, wi, f"{p}.DenseReluDense.wo")

    def attn(p, kind):
        return _attention(get, cfg, {n: f"{p}.{kind}.{n}" for n in ("q", "k", "v", "o")}, cross=kind == "EncDecAttention")

    enc, dec = [], []
    for i in range(cfg.enc_layers):
        p = f"encoder.block.{i}.layer"
        enc.append({"self_norm": _norm(get, f"{p}.0.layer_norm", bias=False), "self_attn": attn(f"{p}.0", "SelfAttention"),
                    "mlp_norm": _norm(get, f"{p}.1.layer_norm", bias=False), "mlp": mlp(f"{p}.1")})
    for i in range(cfg.dec_layers):
        p = f"decoder.block.{i}.layer"
        dec.append({"self_norm": _norm(get, f"{p}.0.layer_norm", bias=False), "self_attn": attn(f"{p}.0", "SelfAttention"),
                    "cross_norm": _norm(get, f"{p}.1.layer_norm", bias=False),
                    "cross_attn": attn(f"{p}.1", "EncDecAttention"),
                    "mlp_norm": _norm(get, f"{p}.2.layer_norm", bias=False), "mlp": mlp(f"{p}.2")})
    rel = "layer.0.SelfAttention.relative_attention_bias.weight"
    params = {"embed": {"table": get("shared.weight")},
              "encoder": {"positions": {"rel": get(f"encoder.block.0.{rel}")}, "blocks": _stack_layers(enc),
                          "final_norm": _norm(get, "encoder.final_layer_norm", bias=False)},
              "decoder": {"positions": {"rel": get(f"decoder.block.0.{rel}")}, "blocks": _stack_layers(dec),
                          "final_norm": _norm(get, "decoder.final_layer_norm", bias=False)}}
    if not cfg.tie_embeddings:
        params["head"] = {"kernel": get("lm_head.weight").T}
    return params


@dataclass(frozen=True)
class Family:
    """How one ``model_type`` maps onto archcmp: config translation and tensor names."""

    config: Callable[[Mapping[str, Any], TensorSource], ModelConfig]
    weights: Callable[[TensorSource, ModelConfig], dict]
    prefixes: tuple[str, ...]  # optional name prefixes of the tensors ("" = none)


FAMILIES: dict[str, Family] = {
    "gpt2": Family(lambda hf, get: gpt2_config(hf), gpt2_weights, ("transformer.", "")),
    "bert": Family(lambda hf, get: bert_config(hf, get.has("cls.predictions.transform.dense.weight")), bert_weights,
                   ("bert.", "")),
    "llama": Family(lambda hf, get: llama_config(hf), llama_weights, ("model.", "")),
    "t5": Family(lambda hf, get: t5_config(hf, get.has("lm_head.weight")), t5_weights, ("",)),
}
