"""Device mesh, logical-axis rules and array placement (``jax.sharding`` only).

Parameters carry one *logical* axis name per dimension (``out_sharding`` metadata set in
:mod:`archcmp.model.layers`: vocab, embed, heads, kv, qkv, mlp, gate, norm, pos, rel_buckets, and
``layers`` for the scanned stacks). The config maps logical names to the axes of a 3-D mesh
``(data, fsdp, tensor)``, as MaxText / t5x ``logical_axis_rules`` do::

    mesh: {data: -1, fsdp: 1, tensor: 1}        # -1: all remaining devices
    sharding:
      rules: {batch: [data, fsdp], embed: fsdp, vocab: tensor, heads: tensor, mlp: tensor}

A dimension takes the longest prefix of its mesh axes whose size product divides it (axes of size
1 are dropped, so pure data parallelism replicates every parameter). With ``fsdp > 1`` a parameter
that still has nothing on ``fsdp`` (no embed dimension, or one that does not divide) gets its
largest divisible dimension other than ``layers`` sharded over it, so FSDP shards every parameter
that can be sharded. Optimizer moments inherit the metadata (optax maps over the parameter tree)
and therefore the shardings of their parameters; counters and other leaves are replicated.

Batches ``[A, B/A, ...]`` (gradient accumulation) are sharded on dimension 1 over the ``batch``
rule's axes; evaluation batches ``[B, ...]`` on dimension 0. In a multi-process run every process
builds the same global numpy batch and ``jax.make_array_from_callback`` hands each process only the
rows of its own devices.

With one device in one process :func:`make_placement` returns a placement that changes nothing:
the train and eval steps are compiled exactly as before (no shardings given to ``jax.jit``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("batch", "vocab", "embed", "heads", "kv", "qkv", "mlp", "gate", "norm", "pos", "rel_buckets",
                "layers")
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"), "embed": ("fsdp",), "vocab": ("tensor",), "heads": ("tensor",),
    "mlp": ("tensor",)}


def _config_error(msg: str) -> Exception:
    from archcmp.training.settings import ConfigError

    return ConfigError(msg)


@dataclass(frozen=True)
class MeshSettings:
    """Mesh axis sizes as configured (``-1`` = fill with the remaining devices) and the rules."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: tuple[tuple[str, tuple[str, ...]], ...] = tuple(DEFAULT_RULES.items())

    @property
    def rule_map(self) -> dict[str, tuple[str, ...]]:
        return dict(self.rules)

    def resolve(self, n_devices: int) -> dict[str, int]:
        """Concrete axis sizes for ``n_devices``; ConfigError naming the key when they do not fit."""
        sizes = {a: getattr(self, a) for a in MESH_AXES}
        fill = [a for a, v in sizes.items() if v == -1]
        fixed = math.prod(v for v in sizes.values() if v != -1)
        if fill:
            if n_devices % fixed:
                raise _config_error(f"mesh.{fill[0]}=-1: the other axes ({fixed} devices) do not divide the "
                                    f"{n_devices} devices")
            sizes[fill[0]] = n_devices // fixed
        elif fixed != n_devices:
            shown = "x".join(f"{a}={sizes[a]}" for a in MESH_AXES)
            first = next((a for a in MESH_AXES if sizes[a] != 1), "data")
            raise _config_error(f"mesh.{first}={sizes[first]}: mesh {shown} has {fixed} devices but JAX sees "
                                f"{n_devices}; make the product match or set one axis to -1")
        return sizes


def parse_mesh(cfg: Mapping[str, Any]) -> MeshSettings:
    """Validate ``mesh`` and ``sharding.rules`` of a plain config dict (no JAX needed)."""
    mesh = cfg.get("mesh") or {}
    unknown = sorted(set(mesh) - set(MESH_AXES))
    if unknown:
        raise _config_error(f"mesh.{unknown[0]}: unknown mesh axis; the axes are {list(MESH_AXES)}")
    sizes = {}
    for axis in MESH_AXES:
        value = mesh.get(axis, -1 if axis == "data" else 1)
        if isinstance(value, bool) or not isinstance(value, int) or not (value >= 1 or value == -1):
            raise _config_error(f"mesh.{axis}={value!r}: must be a positive integer or -1 (all remaining devices)")
        sizes[axis] = value
    if sum(v == -1 for v in sizes.values()) > 1:
        axes = [a for a, v in sizes.items() if v == -1]
        raise _config_error(f"mesh.{axes[1]}=-1: only one mesh axis can be -1 (mesh.{axes[0]} already is)")
    raw_rules = (cfg.get("sharding") or {}).get("rules")
    rules = dict(DEFAULT_RULES) if raw_rules is None else {}
    for name, target in (raw_rules or {}).items():
        key = f"sharding.rules.{name}"
        if name not in LOGICAL_AXES:
            raise _config_error(f"{key}: unknown logical axis; choose among {list(LOGICAL_AXES)}")
        targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
        for t in targets:
            if t not in MESH_AXES:
                raise _config_error(f"{key}={target!r}: {t!r} is not a mesh axis; use {list(MESH_AXES)} or null")
        if len(set(targets)) != len(targets):
            raise _config_error(f"{key}={target!r}: a mesh axis appears twice")
        rules[name] = targets
    return MeshSettings(rules=tuple(sorted(rules.items())), **sizes)


# ---- partition specs ------------------------------------------------------------------------
def partition_spec(shape: tuple[int, ...], names: tuple[str | None, ...] | None,
                   rules: Mapping[str, tuple[str, ...]], sizes: Mapping[str, int]):
    """PartitionSpec of one array from its logical axis names (see the module docstring)."""
    from jax.sharding import PartitionSpec as P

    names = tuple(names) if names else (None,) * len(shape)
    spec: list[Any] = []
    used: set[str] = set()
    for dim, name in zip(shape, names):
        keep, prod = [], 1
        for axis in rules.get(name, ()) if name else ():
            if sizes[axis] == 1 or axis in used:
                continue
            if dim % (prod * sizes[axis]):
                break
            keep.append(axis)
            prod *= sizes[axis]
        used.update(keep)
        spec.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    fsdp = sizes.get("fsdp", 1)
    if fsdp > 1 and "fsdp" not in used:
        free = [i for i, (dim, name) in enumerate(zip(shape, names))
                if spec[i] is None and name != "layers" and dim % fsdp == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], -i))] = "fsdp"
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def _is_variable(x: Any) -> bool:
    from flax import nnx

    return isinstance(x, nnx.Variable)


def logical_names(var: Any) -> tuple[str, ...] | None:
    """Logical axis names of an ``nnx.Variable`` (its ``out_sharding`` metadata) or None."""
    names = var.get_metadata().get("out_sharding")
    return tuple(names) if names else None


def tree_shardings(tree: Any, mesh, rules: Mapping[str, tuple[str, ...]]) -> Any:
    """NamedShardings for a pytree of params / optimizer state (same structure, Variables kept)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    sizes = dict(mesh.shape)

    def one(x):
        if _is_variable(x):
            spec = partition_spec(tuple(x.shape), logical_names(x), rules, sizes)
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, tree, is_leaf=_is_variable)


def describe_shardings(shardings: Any) -> dict[str, str]:
    """``{"params/embed/table": "PartitionSpec('fsdp',)", ...}`` for records and tests."""
    import jax

    out = {}
    for path, sh in jax.tree_util.tree_leaves_with_path(shardings):
        out["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = str(sh.spec)
    return out


# ---- placement ------------------------------------------------------------------------------
class Placement:
    """Where the run's arrays live: one device (``mesh=None``: nothing changes) or a mesh."""

    def __init__(self, mesh=None, rules: Mapping[str, tuple[str, ...]] | None = None):
        self.mesh = mesh
        self.rules = dict(DEFAULT_RULES if rules is None else rules)

    @property
    def trivial(self) -> bool:
        return self.mesh is None

    @property
    def batch_axes(self) -> tuple[str, ...]:
        if self.mesh is None:
            return ()
        return tuple(a for a in self.rules.get("batch", ()) if self.mesh.shape[a] > 1)

    @property
    def batch_shards(self) -> int:
        return math.prod(self.mesh.shape[a] for a in self.batch_axes) if self.mesh is not None else 1

    def describe(self) -> dict[str, Any]:
        import jax

        shape = {a: 1 for a in MESH_AXES} if self.mesh is None else {a: int(s) for a, s in self.mesh.shape.items()}
        return {"mesh": shape, "devices": len(jax.devices()) if self.mesh is not None else 1,
                "processes": jax.process_count(), "platform": jax.default_backend()}

    # -- shardings
    def _named(self, *spec):
        from jax.sharding import NamedSharding, PartitionSpec as P

        return NamedSharding(self.mesh, P(*spec))

    @property
    def replicated(self):
        return self._named()

    def batch_sharding(self, batch_dim: int):
        axes = self.batch_axes
        return self._named(*([None] * batch_dim), (axes if len(axes) > 1 else axes[0]) if axes else None)

    def shardings(self, tree: Any) -> Any:
        return tree_shardings(tree, self.mesh, self.rules)

    # -- moving data
    def put(self, tree: Any) -> Any:
        """Place a pytree (params / train state) with its shardings; identity on one device."""
        if self.trivial:
            return tree
        import jax

        shardings = self.shardings(tree)
        if jax.process_count() == 1:
            return jax.device_put(tree, shardings)
        # Multi-process: every process holds the same host value; each fills its own shards.
        return jax.tree.map(lambda x, s: jax.make_array_from_callback(
            np.shape(x), s, lambda idx, a=np.asarray(jax.device_get(x)): a[idx]), tree, shardings)

    def batch(self, batch: Mapping[str, np.ndarray], batch_dim: int) -> Any:
        """Global batch arrays sharded on ``batch_dim``; each process transfers only its rows."""
        if self.trivial:
            return batch
        import jax

        sharding = self.batch_sharding(batch_dim)
        return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx]) for k, v in batch.items()}

    def key(self, key: Any) -> Any:
        if self.trivial or key is None:
            return key
        import jax

        return jax.device_put(key, self.replicated)

    # -- jit arguments and wrappers
    def train_jit_kwargs(self, state: Any) -> dict:
        if self.trivial:
            return {}
        st = self.shardings(state)
        return {"in_shardings": (st, self.batch_sharding(1), self.replicated),
                "out_shardings": (st, self.replicated)}

    def eval_jit_kwargs(self, params: Any) -> dict:
        if self.trivial:
            return {}
        return {"in_shardings": (self.shardings(params), self.batch_sharding(0)), "out_shardings": self.replicated}

    def wrap_train(self, step: Callable) -> Callable:
        if self.trivial:
            return step
        return lambda state, batch, key: step(state, self.batch(batch, 1), self.key(key))

    def wrap_eval(self, step: Callable) -> Callable:
        if self.trivial:
            return step
        return lambda params, batch: step(params, self.batch(batch, 0))


def make_mesh(settings: MeshSettings, devices: list | None = None):
    """``jax.sharding.Mesh`` with axes (data, fsdp, tensor) over ``devices`` (default: all)."""
    import jax
    from jax.sharding import AxisType

    devices = list(jax.devices() if devices is None else devices)
    sizes = settings.resolve(len(devices))
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                         devices=devices)


def make_placement(settings: MeshSettings | None, *, batch_size: int, grad_accum: int, eval_batch_size: int,
                   devices: list | None = None) -> Placement:
    """The run's placement. One device in one process -> the trivial placement (unchanged path).

    Raises ConfigError naming the key when the mesh does not match the devices or a batch does not
    split over the batch axes (checked before anything is compiled).
    """
    import jax

    settings = settings or MeshSettings()
    devices = list(jax.devices() if devices is None else devices)
    sizes = settings.resolve(len(devices))
    if len(devices) == 1 and jax.process_count() == 1:
        return Placement()
    place = Placement(make_mesh(settings, devices), settings.rule_map)
    shards = place.batch_shards
    micro = batch_size // grad_accum
    if micro % shards:
        key = "train.batch_size" if grad_accum == 1 else "train.grad_accum"
        value = batch_size if grad_accum == 1 else grad_accum
        raise _config_error(f"{key}={value}: micro-batches of {micro} rows do not split over the "
                            f"{shards} devices of the batch axes {list(place.batch_axes)} (mesh {sizes})")
    if eval_batch_size % shards:
        raise _config_error(f"train.eval_batch_size={eval_batch_size}: does not split over the {shards} devices "
                            f"of the batch axes {list(place.batch_axes)} (mesh {sizes})")
    return place
