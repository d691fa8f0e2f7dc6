import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archcmp.training.checkpoint import (
    Checkpointer,
    abstract_nnx_pytree,
    abstract_target,
    nnx_state_to_pytree,
    pytree_into_module,
)

TX = optax.adamw(1e-2)


def make_state(seed: int = 0):
    k = jax.random.PRNGKey(seed)
    params = {
        "emb": jax.random.normal(k, (5, 4), jnp.float32),
        "blocks": [{"w": jax.random.normal(jax.random.fold_in(k, 1), (4, 4), jnp.bfloat16)}],
        "bias": jnp.zeros((4,), jnp.float32),
    }
    return {
        "params": params,
        "opt_state": TX.init(params),
        "step": jnp.asarray(seed, jnp.int32),
        "key": jax.random.key(seed + 100),  # typed key
        "raw_key": jax.random.PRNGKey(seed + 200),  # plain uint32 key
    }


@jax.jit
def train_step(state):
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.1, state["params"])
    updates, opt_state = TX.update(grads, state["opt_state"], state["params"])
    key, _ = jax.random.split(state["key"])
    return dict(
        state,
        params=optax.apply_updates(state["params"], updates),
        opt_state=opt_state,
        step=state["step"] + 1,
        key=key,
    )


def assert_bit_exact(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        assert x.dtype == y.dtype and x.shape == y.shape
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.fixture
def trained():
    s = make_state(3)
    for _ in range(2):
        s = train_step(s)
    return s


def test_round_trip_bit_exact_with_meta(tmp_path, trained):
    meta = {"data": {"epoch": 1, "index": 1234}, "config_hash": "abc123", "fingerprint": None}
    ck = Checkpointer(tmp_path / "ckpt", keep=3)
    assert ck.latest_step() is None and ck.restore_latest_or_none(trained) is None
    assert ck.save(5, trained, {**meta, "data": {"epoch": np.int64(1), "index": jnp.int32(1234)}})
    # restore with a concrete example target (other values) ...
    state, got_meta = ck.restore(target=make_state(0))
    assert_bit_exact(state, trained)
    assert got_meta == meta
    assert isinstance(state["opt_state"][0], optax.ScaleByAdamState)
    assert jnp.issubdtype(state["key"].dtype, jax.dtypes.prng_key)
    # ... and training continues identically from the restored state
    assert_bit_exact(train_step(state), train_step(trained))
    ck.close()


def test_restore_into_fresh_abstract_target(tmp_path, trained):
    Checkpointer(tmp_path, keep=3).save(7, trained, {"pos": 7})
    # what a fresh process has: shapes only, no arrays, no shardings
    abstract = jax.eval_shape(lambda: make_state(0))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    ck2 = Checkpointer(tmp_path, keep=3)
    state, meta = ck2.restore(step=7, target=abstract)
    assert_bit_exact(state, trained)
    assert meta == {"pos": 7}
    dev = jax.local_devices()[0]
    assert all(leaf.sharding.device_set == {dev} for leaf in jax.tree.leaves(state))
    # explicit shardings in the target are honoured
    sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("d",)), jax.sharding.PartitionSpec())
    sharded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
    state, _ = ck2.restore(step=7, target=sharded)
    assert state["params"]["emb"].sharding == sharding
    with pytest.raises(FileNotFoundError):
        ck2.restore(step=8, target=abstract)


def test_keep_every_steps_and_latest(tmp_path):
    ck = Checkpointer(tmp_path, keep=3, every_steps=2)
    s = make_state(0)
    written = [step for step in range(1, 12) if ck.save(step, s, {"step": step})]
    assert written == [2, 4, 6, 8, 10]
    assert ck.all_steps() == [6, 8, 10]
    assert ck.latest_step() == 10
    assert ck.save(11, s, {"step": 11}, force=True)  # final save regardless of cadence
    assert ck.all_steps() == [8, 10, 11]
    assert Checkpointer(tmp_path).latest_step() == 11  # visible to a new process
    with pytest.raises(TypeError, match="JSON"):
        ck.save(12, s, {"bad": object()})
    assert ck.latest_step() == 11
    # re-saving an existing step replaces it
    assert ck.save(10, make_state(1), {"step": 10, "again": True})
    state, meta = ck.restore(step=10, target=s)
    assert meta["again"] is True
    assert_bit_exact(state, make_state(1))


def test_partial_and_corrupt_newest_checkpoint(tmp_path, trained):
    ck = Checkpointer(tmp_path, keep=3)
    ck.save(1, make_state(0), {"pos": 1})
    ck.save(2, trained, {"pos": 2})
    # a kill mid-save leaves an orbax tmp dir behind: ignored, and cleaned by the next Checkpointer
    tmp = tmp_path / "3.orbax-checkpoint-tmp-1234567"
    shutil.copytree(tmp_path / "2", tmp)
    shutil.rmtree(tmp / "state")
    assert ck.latest_step() == 2
    ck2 = Checkpointer(tmp_path, keep=3)
    assert ck2.latest_step() == 2 and not tmp.exists()
    state, meta = ck2.restore(target=make_state(0))
    assert meta == {"pos": 2}
    assert_bit_exact(state, trained)
    # a finalized-looking but corrupt newest step: restore() falls back to the last readable one
    shutil.copytree(tmp_path / "2", tmp_path / "4")
    for f in (tmp_path / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    ck3 = Checkpointer(tmp_path, keep=3)
    assert ck3.latest_step() == 4
    with pytest.warns(RuntimeWarning, match="step 4"):
        state, meta = ck3.restore(target=make_state(0))
    assert meta == {"pos": 2}
    assert_bit_exact(state, trained)


def test_nnx_module_round_trip(tmp_path):
    from flax import nnx

    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(3, 3, rngs=rngs) for _ in range(2)])
            self.drop = nnx.Dropout(0.1, rngs=rngs)

    src = Tiny(nnx.Rngs(0, dropout=1))
    tree = nnx_state_to_pytree(src)
    ck = Checkpointer(tmp_path)
    ck.save(1, {"model": tree}, {})
    dst = Tiny(nnx.Rngs(9, dropout=9))
    state, _ = ck.restore(target={"model": abstract_nnx_pytree(dst)})
    pytree_into_module(dst, state["model"])
    assert_bit_exact(nnx_state_to_pytree(dst), tree)
    x = jnp.ones((1, 3))
    np.testing.assert_array_equal(dst.layers[1](dst.layers[0](x)), src.layers[1](src.layers[0](x)))


def test_abstract_target_leaves():
    t = abstract_target({"a": np.zeros((2,), np.int16), "b": jnp.ones(3), "c": 5, "d": jax.ShapeDtypeStruct((1,), jnp.float32)})
    assert t["a"].dtype == np.int16 and t["a"].sharding is not None
    assert t["b"].shape == (3,) and t["d"].sharding is not None
    assert t["c"] == 5
