"""Import published checkpoints (GPT-2, BERT, T5, Llama) from local files into archcmp models.

A checkpoint directory holds a Hugging Face style ``config.json``, one or more ``*.safetensors``
files and, optionally, ``tokenizer.json``. A llama.cpp ``.gguf`` file (or a directory holding one
and no ``config.json``) of a Llama-architecture model is read by
:mod:`archcmp.loading.gguf_file` into the same config and tensors, dequantised to float32.
Nothing is downloaded: the user points at files.

Each supported ``model_type`` is one :class:`~archcmp.loading.families.Family`
(:mod:`archcmp.loading.families`): how its config maps onto a
:class:`~archcmp.model.config.ModelConfig` (the exact-architecture options of that class) and how its
tensors map onto archcmp parameters. This module reads the files, fills the model's parameter tree
and checks that every parameter was given.

========  =========  =======================================================================
family    arch       what the options express
========  =========  =======================================================================
gpt2      decoder    pre-LayerNorm, biases, learned positions, tanh-GELU, tied head
bert      encoder    post-LayerNorm, biases, token types, embedding norm, erf-GELU, MLM head
llama     decoder    RMSNorm, SwiGLU, rotate-half RoPE, grouped-query attention, no biases
t5        encdec     RMSNorm, unscaled attention, shared relative bias (one-sided in the
                     decoder), ReLU or gated-GELU MLP, tied head scaled by d_model**-0.5
========  =========  =======================================================================
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from archcmp.loading.errors import CheckpointError
from archcmp.loading.families import FAMILIES, Tensors, TensorSource
from archcmp.model.config import ModelConfig

__all__ = ["CheckpointError", "import_checkpoint", "import_tensors", "load_pretrained"]


# ----------------------------------------------------------------------------- reading files
def read_config(directory: Path) -> dict:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a checkpoint directory needs config.json)")
    return json.loads(path.read_text())


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of every ``*.safetensors`` file in ``directory`` (numpy; no torch)."""
    from safetensors import safe_open

    files = sorted(Path(directory).glob("*.safetensors"))  # model.safetensors or its shards
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors file")
    out: dict[str, np.ndarray] = {}
    for f in files:
        with safe_open(str(f), framework="np") as handle:
            for name in handle.keys():
                out[name] = handle.get_tensor(name)
    return out


# Tensors a checkpoint may carry that archcmp does not use (buffers, heads of other tasks).
_IGNORED = ("pooler.", "attn.bias", "attn.masked_bias", "position_ids", "rotary_emb.inv_freq",
            "cls.seq_relationship", "cls.predictions.decoder.weight", "encoder.embed_tokens.weight",
            "decoder.embed_tokens.weight", "lm_head.weight")


# ----------------------------------------------------------------------------- import
@dataclass
class Imported:
    """What :func:`import_checkpoint` returns: the model, its config and what was (not) used."""

    model: Any
    config: ModelConfig
    model_type: str
    unused: list[str]
    has_lm_head: bool  # False: the file has no (tied or own) vocabulary head for this arch's loss


def import_checkpoint(directory: str | Path) -> Imported:
    """Build the archcmp model of a local checkpoint directory and load its weights (float32)."""
    directory = Path(directory)
    return import_tensors(read_config(directory), read_tensors(directory), directory)


def import_tensors(hf: Mapping[str, Any], tensors: Tensors, source: Path) -> Imported:
    """A Hugging Face style config dict and its tensors (any dtype; read as float32) -> :class:`Imported`.
    ``source`` (the directory or file) names the checkpoint in errors."""
    from flax import nnx

    from archcmp.model.models import build_model

    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(f"{source / 'config.json' if source.is_dir() else source}: model_type={model_type!r} "
                              f"is not supported; supported: {sorted(FAMILIES)}")
    family = FAMILIES[model_type]
    get = TensorSource(tensors, family.prefixes, model_type, source)
    cfg = family.config(hf, get)
    values = family.weights(get, cfg)

    graphdef, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg)))
    target = nnx.to_pure_dict(state)
    filled = _fill(target, values, source, ())
    nnx.replace_by_pure_dict(state, filled)
    model = nnx.merge(graphdef, state)
    unused = sorted(n for n in set(get.tensors) - get.used if not any(tag in n for tag in _IGNORED))
    has_head = model_type != "bert" or cfg.head_transform
    return Imported(model, cfg, model_type, unused, has_head)


def _fill(target: Any, values: Any, directory: Path, path: tuple[str, ...]) -> Any:
    """Match the abstract parameter tree ``target`` with converted ``values``: every parameter
    must be given, with the abstract shape, as float32 jax arrays."""
    import jax.numpy as jnp

    if isinstance(target, Mapping):
        values = values if isinstance(values, Mapping) else {}
        return {k: _fill(v, values.get(k), directory, path + (str(k),)) for k, v in target.items()}
    name = ".".join(path)
    if values is None:
        raise CheckpointError(f"{directory}: no tensor maps to archcmp parameter {name!r}")
    if tuple(values.shape) != tuple(target.shape):
        raise CheckpointError(f"{directory}: archcmp parameter {name!r} expects shape {tuple(target.shape)}, "
                              f"the checkpoint gives {tuple(values.shape)}")
    return jnp.asarray(values, target.dtype)


def gguf_path(path: Path) -> Path | None:
    """The GGUF file ``path`` names: the file itself, or the one ``*.gguf`` of a directory without
    ``config.json``; None for a safetensors checkpoint directory."""
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise CheckpointError(f"{path}: a checkpoint file must be .gguf (a safetensors checkpoint is a directory "
                                  "with config.json)")
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise CheckpointError(f"{path}: {len(found)} .gguf files ({', '.join(f.name for f in found)}); name one")
    return found[0] if found else None


def load_pretrained(path: str | Path) -> "Loaded":  # noqa: F821 - imported inside (no cycle)
    """A local checkpoint -> :class:`~archcmp.loading.loaded.Loaded` (model, config, tokenizer).

    ``path`` is a directory with ``config.json`` + ``*.safetensors`` (+ optional ``tokenizer.json``,
    read with the ``tokenizers`` library), or a llama.cpp ``.gguf`` file of a Llama-architecture
    model (or a directory holding one): its tensors are dequantised to float32 and its tokenizer
    built from the file's metadata. Without a tokenizer ``encode`` raises and the model takes
    batches of ids. ``info`` records the model type, the load time, whether the checkpoint has a
    vocabulary head, and tensors of the files that were not used.
    """
    import time

    from archcmp.loading.loaded import Loaded

    t0 = time.perf_counter()
    path = Path(path)
    gguf = gguf_path(path)
    extra: dict = {}
    if gguf is not None:
        from archcmp.loading.gguf_file import read_gguf

        ckpt = read_gguf(gguf)
        hf, source, tokenizer = ckpt.config, gguf, ckpt.tokenizer
        imported = import_tensors(hf, ckpt.tensors, gguf)
        no_tokenizer = f"{gguf}: {ckpt.tokenizer_problem}, so texts cannot be tokenised (pass a batch of ids)"
        extra = {"format": "gguf", **ckpt.info}
        name = gguf.stem
    else:
        hf, source = read_config(path), path
        imported = import_tensors(hf, read_tensors(path), path)
        tok_path = path / "tokenizer.json"
        tokenizer = None
        if tok_path.is_file():
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tok_path))
        no_tokenizer = f"{tok_path}: missing, so texts cannot be tokenised (pass a batch of ids)"
        extra = {"format": "safetensors"}
        name = path.name
    if tokenizer is not None:
        tokenizer.no_padding()  # padding is ours (segment ids); some files pad every text to a fixed length

    def encode(text: str) -> np.ndarray:
        if tokenizer is None:
            raise CheckpointError(no_tokenizer)
        return np.asarray(tokenizer.encode(text).ids, np.int32)

    start = hf.get("decoder_start_token_id")
    info = {"kind": "pretrained", "model_type": imported.model_type, "unused_tensors": imported.unused,
            "has_lm_head": imported.has_lm_head, "decoder_start_id": 0 if start is None else int(start),
            "name": name, **extra, "load_seconds": time.perf_counter() - t0}
    return Loaded(imported.model, imported.config, tokenizer, encode, source, info)
