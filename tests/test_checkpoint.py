import shutil
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archcmp.training import checkpoint as checkpoint_mod
from archcmp.training.checkpoint import (
    DIGEST,
    Checkpointer,
    NoReadableCheckpoint,
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
    # a finalized-looking newest step whose files were overwritten after the save: restore() falls
    # back to the last readable one, with one warning naming the step, the file and the step used
    shutil.copytree(tmp_path / "2", tmp_path / "4")
    for f in (tmp_path / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    ck3 = Checkpointer(tmp_path, keep=3)
    assert ck3.latest_step() == 4
    with pytest.warns(RuntimeWarning) as caught:
        state, meta = ck3.restore(target=make_state(0))
    assert meta == {"pos": 2}
    assert_bit_exact(state, trained)
    (w,) = [x for x in caught if issubclass(x.category, RuntimeWarning)]
    assert str(w.message).startswith(f"checkpoint step 4 in {tmp_path} is unreadable (state/")
    assert str(w.message).endswith("using step 2 instead")
    # the same without a digest (a checkpoint from before digests): orbax itself fails, same fallback
    (tmp_path / "4" / DIGEST).unlink()
    with pytest.warns(RuntimeWarning, match=r"checkpoint step 4 .* unreadable \(\w+: .*\); using step 2 instead"):
        state, meta = Checkpointer(tmp_path, keep=3).restore(target=make_state(0))
    assert meta == {"pos": 2}
    assert_bit_exact(state, trained)


def _corrupt(path, how):
    data = path.read_bytes()
    if how == "flip":
        path.write_bytes(bytes([data[0] ^ 0x01]) + data[1:])
    elif how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()


def test_every_file_of_a_corrupt_newest_step_is_caught_before_orbax_reads_it(tmp_path, trained, monkeypatch):
    """One flipped bit, half a file or a lost file anywhere in the newest step: that step is never handed
    to orbax (a restore orbax starts and then fails leaves tensorstore reads that report the closed
    event loop as tracebacks), the previous step is restored, one warning names the file."""
    src = tmp_path / "src"
    ck = Checkpointer(src, keep=3)
    ck.save(1, trained, {"pos": 1})
    ck.save(2, make_state(5), {"pos": 2})
    ck.close()
    files = sorted(f.relative_to(src / "2").as_posix() for f in (src / "2").rglob("*")
                   if f.is_file() and f.name != DIGEST)
    assert len(files) >= 8 and "state/manifest.ocdbt" in files  # orbax's layout: state/, meta/, metadata
    orbax_asked = []
    real_restore = checkpoint_mod.ocp.CheckpointManager.restore
    monkeypatch.setattr(checkpoint_mod.ocp.CheckpointManager, "restore",
                        lambda self, step, **kw: orbax_asked.append(step) or real_restore(self, step, **kw))
    for i, rel in enumerate(files):
        how = ("flip", "truncate", "delete")[i % 3]
        d = tmp_path / f"case{i}"
        shutil.copytree(src, d)
        if how == "truncate" and (d / "2" / rel).stat().st_size < 2:
            how = "flip"
        _corrupt(d / "2" / rel, how)
        orbax_asked.clear()
        with pytest.warns(RuntimeWarning) as caught:
            state, meta = Checkpointer(d).restore(target=make_state(0))
        assert meta == {"pos": 1} and orbax_asked == [1], (rel, how, orbax_asked)
        assert_bit_exact(state, trained)
        (w,) = [x for x in caught if issubclass(x.category, RuntimeWarning)]
        assert f"checkpoint step 2 in {d} is unreadable ({rel} " in str(w.message), (rel, how, str(w.message))
        assert str(w.message).endswith("using step 1 instead")


def test_digests_survive_later_saves_and_all_corrupt_is_one_error_naming_the_directory(tmp_path):
    ck = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        ck.save(step, make_state(step), {"pos": step})
    assert sorted(p.parent.name for p in tmp_path.glob(f"*/{DIGEST}")) == ["2", "3"]  # went with step 1
    for step in (2, 3):  # later saves and the clean-up of step 1 changed nothing already saved
        assert checkpoint_mod.digest_problem(tmp_path / str(step)) is None
        (tmp_path / str(step) / "state" / "extra").write_bytes(b"x")
        assert checkpoint_mod.digest_problem(tmp_path / str(step)) == "state/extra was not part of the save"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning before the error: the error says it all
        with pytest.raises(NoReadableCheckpoint) as err:
            ck.restore(target=make_state(0))
    first = str(err.value).splitlines()[0]
    assert first == f"no readable checkpoint in {tmp_path} (steps 3, 2 all corrupt or unreadable)"
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(NoReadableCheckpoint, match="checkpoint step 2 .* is corrupt: state/extra"):
        ck.restore(step=2, target=make_state(0))


def test_only_closed_loop_reports_of_abandoned_reads_are_dropped():
    seen = []
    hook = checkpoint_mod._drops_closed_loop_reports(seen.append)

    def report(exc, obj=None):
        return types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=None, err_msg=None,
                                     object=obj)

    hook(report(RuntimeError("Event loop is closed")))
    assert seen == []
    others = [report(RuntimeError("Event loop is closed"), obj=object()), report(RuntimeError("other")),
              report(ValueError("Event loop is closed"))]
    for r in others:
        hook(r)
    assert seen == others


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


def test_members_resume_from_the_newest_step_all_of_them_hold_intact(tmp_path):
    """train.num_seeds=k: one member's newest step damaged -> every member resumes from the previous step
    (one warning naming the damaged member step and the step used); no intact common step -> one
    config error naming the group directory and train.resume=false."""
    from archcmp.model.config import ConfigError
    from archcmp.training.ensemble import resume_step

    group = tmp_path / "group"
    cks = [Checkpointer(group / f"m{i}" / "checkpoints", keep=3) for i in range(3)]
    for step in (2, 4):
        for i, ck in enumerate(cks):
            ck.save(step, make_state(step + i), {"pos": step})
    assert resume_step(cks) == 4
    _corrupt(group / "m1" / "checkpoints" / "4" / "state" / "manifest.ocdbt", "truncate")
    with pytest.warns(RuntimeWarning) as caught:
        assert resume_step(cks) == 2
    (w,) = [x for x in caught if issubclass(x.category, RuntimeWarning)]
    assert str(w.message).startswith(f"checkpoint step 4 is damaged ({group / 'm1' / 'checkpoints' / '4'}: "
                                     "state/manifest.ocdbt has ")
    assert str(w.message).endswith("every member resumes from step 2 instead")
    _corrupt(group / "m2" / "checkpoints" / "2" / "meta" / "metadata", "delete")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError) as err:
            resume_step(cks)
    msg = str(err.value)
    assert "\n" not in msg and f"under {group} " in msg and "train.resume=false" in msg
