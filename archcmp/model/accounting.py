"""Exact parameter counts and FLOPs, counted layer by layer from the config.

Parameter counts follow the modules of :mod:`archcmp.model.layers`, :mod:`~archcmp.model.attention`
and :mod:`~archcmp.model.embeddings` one to one (a test compares them with the real parameter tree).
FLOPs count every matrix multiply of the forward pass as 2·m·n·k, including attention scores and the
attention-weighted sum over the *full* score matrix (we compute masked entries too), and the output
projection at every position (MLM computes logits everywhere even though only masked positions carry
loss). Training FLOPs are 3× forward (backward ≈ 2× forward). Norms, softmax and activations are not
counted (they are not matmuls; a test checks the matmul count against the traced program).
"""
from __future__ import annotations

from dataclasses import dataclass

from archcmp.model.config import ModelConfig


def _norm_params(cfg: ModelConfig) -> int:
    return 2 * cfg.d_model if cfg.norm == "layernorm" else cfg.d_model


def _kv_dim(cfg: ModelConfig) -> int:
    return cfg.kv_heads * cfg.head_size  # width of k (or v): fewer heads under grouped-query attention


def _attention_params(cfg: ModelConfig) -> int:
    # q [D,H,K] + k,v [D,2,G,K] (fused [D,3,H,K] when G = H) + out [H,K,D]
    n = 2 * cfg.d_model * cfg.qkv_dim + 2 * cfg.d_model * _kv_dim(cfg)
    if cfg.use_bias:
        n += cfg.qkv_dim + 2 * _kv_dim(cfg) + cfg.d_model
    return n


def _mlp_params(cfg: ModelConfig) -> int:
    """The MLP sub-layer and its norm (none in attention-only blocks, ``cfg.mlp=False``)."""
    if not cfg.mlp:
        return 0
    n_in = 2 if cfg.gated else 1
    n = cfg.d_model * cfg.d_ff * (n_in + 1)
    return n + (n_in * cfg.d_ff + cfg.d_model if cfg.use_bias else 0) + _norm_params(cfg)


def block_params(cfg: ModelConfig, cross: bool = False) -> int:
    n = _attention_params(cfg) + _mlp_params(cfg) + _norm_params(cfg)
    if cross:
        n += _attention_params(cfg) + _norm_params(cfg)
    return n


def _position_params(cfg: ModelConfig) -> int:
    if cfg.pos_encoding == "learned":
        return cfg.max_len * cfg.d_model
    if cfg.pos_encoding == "relative":
        return cfg.rel_buckets * cfg.n_heads
    return 0


def stack_params(cfg: ModelConfig, n_layers: int, cross: bool = False) -> int:
    final = _norm_params(cfg) if cfg.norm_position == "pre" else 0
    embed_norm = _norm_params(cfg) if cfg.embed_norm else 0
    return n_layers * block_params(cfg, cross) + _position_params(cfg) + final + embed_norm


def _head_params(cfg: ModelConfig) -> int:
    """Untied kernel [D,V], MLM transform (dense [D,D] + bias + norm) and vocabulary bias."""
    n = 0 if cfg.tie_embeddings else cfg.d_model * cfg.vocab_size
    if cfg.head_transform:
        n += cfg.d_model * cfg.d_model + cfg.d_model + _norm_params(cfg)
    return n + (cfg.vocab_size if cfg.head_bias else 0)


@dataclass(frozen=True)
class ParamCount:
    total: int
    embedding: int  # token table, untied output head, learned position tables

    @property
    def nonembedding(self) -> int:
        return self.total - self.embedding


def count_params(cfg: ModelConfig) -> ParamCount:
    """Closed-form parameter count of ``build_model(cfg)``."""
    token = (cfg.vocab_size + cfg.type_vocab_size) * cfg.d_model
    head = _head_params(cfg)
    stacks = stack_params(cfg, cfg.enc_layers)
    n_pos_tables = 1
    if cfg.arch == "encdec":
        stacks += stack_params(cfg, cfg.dec_layers, cross=True)
        n_pos_tables = 2
    learned_pos = n_pos_tables * cfg.max_len * cfg.d_model if cfg.pos_encoding == "learned" else 0
    vocab_head = (0 if cfg.tie_embeddings else cfg.d_model * cfg.vocab_size) + (cfg.vocab_size if cfg.head_bias else 0)
    return ParamCount(total=token + head + stacks, embedding=token + vocab_head + learned_pos)


# ---- FLOPs -------------------------------------------------------------------------------
def _layer_forward_flops(cfg: ModelConfig, context: int, memory: int = 0) -> int:
    """Forward matmul FLOPs of one block, per query token.

    ``context``: key length of self-attention; ``memory``: encoder length for cross-attention
    (0 = no cross-attention). The K/V projection of the memory is charged to the encoder
    tokens, see :func:`forward_flops`.
    """
    D, Q, F = cfg.d_model, cfg.qkv_dim, cfg.d_ff
    n_in = 2 if cfg.gated else 1
    flops = 2 * D * (Q + 2 * _kv_dim(cfg)) + 2 * Q * D  # q, k, v + output projection
    flops += 2 * context * Q * 2  # scores q·k and probs·v over the full row
    if cfg.mlp:
        flops += 2 * D * F * n_in + 2 * F * D  # MLP
    if memory:
        flops += 2 * D * Q + 2 * Q * D  # cross q and output projections
        flops += 2 * memory * Q * 2  # cross scores and weighted sum
    return flops


def forward_flops(cfg: ModelConfig, seq_len: int, enc_len: int = 0) -> int:
    """Forward matmul FLOPs of one row: ``seq_len`` tokens (the decoder side for encdec) and,
    for encdec, ``enc_len`` encoder tokens."""
    head = 2 * cfg.d_model * cfg.vocab_size + (2 * cfg.d_model * cfg.d_model if cfg.head_transform else 0)
    if cfg.arch != "encdec":
        return seq_len * (cfg.enc_layers * _layer_forward_flops(cfg, seq_len) + head)
    if enc_len <= 0:
        raise ValueError(f"enc_len={enc_len!r}: encdec FLOPs need the encoder length")
    enc = enc_len * cfg.enc_layers * _layer_forward_flops(cfg, enc_len)
    memory_kv = enc_len * cfg.dec_layers * 2 * cfg.d_model * 2 * _kv_dim(cfg)  # each decoder layer projects K,V of the memory
    dec = seq_len * (cfg.dec_layers * _layer_forward_flops(cfg, seq_len, memory=enc_len) + head)
    return enc + memory_kv + dec


def train_flops_per_row(cfg: ModelConfig, seq_len: int, enc_len: int = 0) -> int:
    """Forward + backward FLOPs for one row (3× forward)."""
    return 3 * forward_flops(cfg, seq_len, enc_len)


def flops_per_token(cfg: ModelConfig, seq_len: int, enc_len: int = 0) -> float:
    """Training FLOPs per position processed (encoder and decoder positions counted separately,
    then averaged over all positions of the row)."""
    return train_flops_per_row(cfg, seq_len, enc_len) / float(seq_len + enc_len)


def traced_matmul_flops(fn, *args, **kwargs) -> int:
    """Count 2·m·n·k over every ``dot_general`` in the traced program of ``fn(*args)``.

    An independent check on :func:`forward_flops`: it walks the jaxpr (into scans, which
    multiply by their length, and into nested calls) instead of trusting the formula.
    """
    import jax
    import numpy as np

    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (lhs_contract, _), _ = eqn.params["dimension_numbers"]
                lhs_shape = eqn.invars[0].aval.shape
                k = int(np.prod([lhs_shape[d] for d in lhs_contract])) if lhs_contract else 1
                total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * k
                continue
            scale = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
            for sub in _subjaxprs(eqn):
                total += scale * count(sub)
        return total

    def _subjaxprs(eqn):
        for value in eqn.params.values():
            for item in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    yield inner

    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    return count(closed.jaxpr)
