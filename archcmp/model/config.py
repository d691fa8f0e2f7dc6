"""One frozen configuration for the whole model family.

Every module takes a :class:`ModelConfig`. The four architectures differ only in ``arch``
(which selects masks and wiring); everything else is shared. Derived sizes are properties,
never extra keys. Construction validates every field and raises ``ValueError`` naming the
field and the bad value, so a bad config fails before anything is traced or compiled.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

ARCHS = ("encoder", "decoder", "prefix_lm", "encdec")


class ConfigError(ValueError):
    """A bad configuration value (any config group: model, train, device, mesh, ...); the message
    starts with ``key=value``."""


POS_ENCODINGS = ("learned", "sinusoidal", "rope", "relative", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu", "relu", "swiglu", "geglu", "gelu_erf")  # "gelu" is the tanh approximation, "gelu_erf" exact
ATTENTION_PATTERNS = ("dense", "local", "strided")
DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "dots", "full")
ATTENTION_IMPLS = ("explicit", "blocked", "xla", "cudnn")  # archcmp.model.attention_impls


def _fail(field: str, value: Any, why: str) -> None:
    raise ValueError(f"model.{field}={value!r}: {why}")


def _choice(field: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        _fail(field, value, f"unknown name; choose one of {list(options)}")


def _positive(field: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        _fail(field, value, "must be a " + ("non-negative" if allow_zero else "positive") + " integer")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one model of the family (all four architectures)."""

    arch: str = "decoder"
    vocab_size: int = 128
    d_model: int = 64
    n_layers: int = 2  # depth of the single stack; for encdec the default for both sides
    n_enc_layers: int | None = None  # encdec only; None -> n_layers
    n_dec_layers: int | None = None  # encdec only; None -> n_layers
    n_heads: int = 4
    head_dim: int | None = None  # None -> d_model // n_heads
    d_ff: int = 256
    # longest training sequence; only a learned position table cannot go past it (sinusoidal, RoPE,
    # relative buckets, ALiBi and none are computed for any position: length extrapolation)
    max_len: int = 256
    pos_encoding: str = "learned"
    rope_theta: float = 10000.0
    rel_buckets: int = 32  # T5 relative-position buckets
    rel_max_distance: int = 128
    norm: str = "layernorm"
    norm_position: str = "pre"
    norm_eps: float = 1e-6
    activation: str = "gelu"
    attention_pattern: str = "dense"
    window: int = 32  # local band width (local and strided patterns)
    stride: int = 32  # strided ("atrous") step of the GPT-3 style sparse pattern
    # Per-layer self-attention patterns, cycled over the layers of each stack (layer i uses entry
    # i % len): ["dense", "local"] alternates dense and banded layers as GPT-3 does. None: every
    # layer uses attention_pattern. Scanned stacks index a stacked mask by a per-layer input.
    layer_patterns: tuple[str, ...] | None = None
    tie_embeddings: bool = True
    dropout: float = 0.0
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype
    scan_layers: bool = True
    # What the backward pass keeps of each layer (jax.checkpoint around the layer): "none" keeps every
    # intermediate; "dots" keeps the dense matmul outputs and recomputes the rest (norms, activations,
    # attention); "full" keeps only the layer input. Same numbers; memory falls, recompute rises.
    remat: str = "none"
    # How attention runs when nobody reads its probabilities (training, evaluation, decoding):
    # "explicit" (the probes' path, scores materialised), "blocked" (flash-style, online softmax;
    # the CPU default: fastest and least memory in bench.md's A/B), "xla" (jax.nn.dot_product_attention;
    # the gpu/tpu presets), "cudnn" (its GPU kernel). Same outputs; see archcmp.model.attention_impls.
    attention_impl: str = "blocked"
    init_std: float = 0.02
    # False: attention-only blocks (no MLP sub-layer, no MLP norm; d_ff unused), the two-layer
    # attention-only transformers of the induction-head studies (Olsson et al. 2022).
    mlp: bool = True
    # ---- options that express published checkpoints exactly (archcmp.loading.pretrained); the defaults
    # leave the model, its parameter tree and old checkpoints unchanged.
    n_kv_heads: int | None = None  # grouped-query attention: key/value heads (None -> n_heads)
    use_bias: bool = False  # a bias on every attention and MLP projection (GPT-2, BERT)
    scale_attention: bool = True  # False: unscaled q·k scores (T5 folds 1/sqrt(K) into its init)
    rel_causal: bool = False  # causal stacks use one-sided relative buckets (T5's decoder)
    type_vocab_size: int = 0  # token-type (segment A/B) embeddings added to tokens (BERT); 0 = none
    embed_norm: bool = False  # a norm over token + position embeddings before the first block (BERT)
    head_transform: bool = False  # dense D->D + activation + norm before the vocabulary projection (BERT MLM)
    head_bias: bool = False  # a bias on the vocabulary logits (BERT MLM)
    tied_head_scale: bool = False  # the tied head sees its input times d_model**-0.5 (T5)

    def __post_init__(self) -> None:
        _choice("arch", self.arch, ARCHS)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len",
                     "rel_buckets", "rel_max_distance", "window", "stride"):
            _positive(name, getattr(self, name))
        for name in ("n_enc_layers", "n_dec_layers", "head_dim", "n_kv_heads"):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value)
        if self.arch != "encdec":
            for name in ("n_enc_layers", "n_dec_layers"):
                if getattr(self, name) is not None:
                    _fail(name, getattr(self, name), f"only used by arch='encdec', not arch={self.arch!r}")
        if self.head_dim is None and self.d_model % self.n_heads != 0:
            _fail("n_heads", self.n_heads, f"d_model={self.d_model} is not divisible by n_heads; "
                  "set head_dim explicitly or pick another n_heads")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            _fail("n_kv_heads", self.n_kv_heads, f"must divide n_heads={self.n_heads} (query heads share K/V heads)")
        _positive("type_vocab_size", self.type_vocab_size, allow_zero=True)
        _choice("pos_encoding", self.pos_encoding, POS_ENCODINGS)
        if not (isinstance(self.rope_theta, (int, float)) and not isinstance(self.rope_theta, bool)
                and self.rope_theta > 0):
            _fail("rope_theta", self.rope_theta, "must be a positive number (the RoPE base wavelength)")
        if self.pos_encoding == "relative":
            if self.rel_buckets < 4:
                _fail("rel_buckets", self.rel_buckets, "T5 relative buckets need at least 4 buckets")
            if self.rel_max_distance <= self.rel_buckets // 4:
                _fail("rel_max_distance", self.rel_max_distance,
                      f"must exceed rel_buckets//4={self.rel_buckets // 4} (the exact-offset buckets)")
        if self.pos_encoding == "rope" and self.head_size % 2:
            _fail("head_dim", self.head_size, "RoPE needs an even head dimension")
        if self.pos_encoding == "sinusoidal" and self.d_model % 2:
            _fail("d_model", self.d_model, "sinusoidal positions need an even d_model")
        _choice("norm", self.norm, NORMS)
        _choice("norm_position", self.norm_position, NORM_POSITIONS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("attention_pattern", self.attention_pattern, ATTENTION_PATTERNS)
        if self.layer_patterns is not None:
            if isinstance(self.layer_patterns, str) or not self.layer_patterns:
                _fail("layer_patterns", self.layer_patterns, "must be a non-empty list of pattern names")
            object.__setattr__(self, "layer_patterns", tuple(self.layer_patterns))  # hashable (static)
            for name in self.layer_patterns:
                if name not in ATTENTION_PATTERNS:
                    _fail("layer_patterns", list(self.layer_patterns),
                          f"unknown pattern {name!r}; choose from {list(ATTENTION_PATTERNS)}")
        _choice("param_dtype", self.param_dtype, DTYPES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("remat", self.remat, REMAT)
        _choice("attention_impl", self.attention_impl, ATTENTION_IMPLS)
        for name in ("tie_embeddings", "scan_layers", "mlp", "use_bias", "scale_attention", "rel_causal",
                     "embed_norm", "head_transform", "head_bias", "tied_head_scale"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "must be true or false")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            _fail("dropout", self.dropout, "must be a number in [0, 1)")
        if not (0.0 <= float(self.dropout) < 1.0):
            _fail("dropout", self.dropout, "must be in [0, 1)")
        for name in ("norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                _fail(name, value, "must be > 0")

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def qkv_dim(self) -> int:
        """Width of the concatenated heads (H * head_size)."""
        return self.n_heads * self.head_size

    @property
    def kv_heads(self) -> int:
        """Key/value heads (grouped-query attention when fewer than ``n_heads``)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def enc_layers(self) -> int:
        """Depth of the bidirectional/causal single stack, or of the encdec encoder."""
        if self.arch == "encdec":
            return self.n_enc_layers if self.n_enc_layers is not None else self.n_layers
        return self.n_layers

    @property
    def dec_layers(self) -> int:
        """Depth of the encdec decoder (0 for single-stack architectures)."""
        if self.arch != "encdec":
            return 0
        return self.n_dec_layers if self.n_dec_layers is not None else self.n_layers

    @property
    def patterns(self) -> tuple[str, ...]:
        """The distinct self-attention patterns of the layers, in order of first use."""
        if self.layer_patterns is None:
            return (self.attention_pattern,)
        return tuple(dict.fromkeys(self.layer_patterns))

    def layer_pattern_ids(self, n_layers: int) -> list[int]:
        """Index into :attr:`patterns` of each of ``n_layers`` layers (the list cycles)."""
        if self.layer_patterns is None:
            return [0] * n_layers
        order = self.patterns
        return [order.index(self.layer_patterns[i % len(self.layer_patterns)]) for i in range(n_layers)]

    @property
    def gated(self) -> bool:
        return self.activation in ("swiglu", "geglu")

    @property
    def fused_qkv(self) -> bool:
        """Self-attention keeps one [D, 3, H, K] kernel; grouped-query attention splits q and kv."""
        return self.kv_heads == self.n_heads

    @property
    def causal(self) -> bool:
        """Whether the single stack (or the encdec decoder) is causal."""
        return self.arch in ("decoder", "prefix_lm", "encdec")

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """Build from a (Hydra) mapping, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model.{unknown[0]}: unknown model config key; known keys: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
