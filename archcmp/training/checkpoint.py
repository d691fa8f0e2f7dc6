"""Orbax save / restore of the train state plus the data position.

One checkpoint per step under ``directory/<step>/`` with two items:

* ``state`` -- a pytree of arrays (params, optax state, step counter, PRNG keys), saved with
  ``ocp.args.StandardSave`` and restored with ``ocp.args.StandardRestore(abstract_target)`` so dtypes,
  shapes, tree structure (optax NamedTuples included) and shardings come from the target.
* ``meta`` -- a JSON dict (data iterator position, config hash, ...), ``ocp.args.JsonSave``.

Saves are synchronous (simple and correct; ``wait()`` exists for API symmetry). Orbax writes each
step into a ``<step>.orbax-checkpoint-tmp-*`` directory and renames it when complete, so a kill
mid-save leaves the previous checkpoint intact; leftover tmp dirs are ignored and cleaned up when the
next :class:`Checkpointer` is opened. ``restore()`` without a step falls back to the newest step that
actually restores if a newer one is unreadable.

Corruption is caught before orbax reads anything: after each save the step directory gets a
``digest.json`` (size and BLAKE2 hash of every file), and a step whose files no longer match it is
skipped without being handed to orbax. A restore that orbax starts and then fails part-way leaves
tensorstore reads in flight whose completions hit the asyncio loop orbax already closed; each one
lands in ``sys.unraisablehook`` as ``RuntimeError('Event loop is closed')`` (dozens to hundreds
of tracebacks). Checking first avoids that for every checkpoint saved here; for a step without a
digest (saved before digests, or killed between orbax's commit and the digest write) orbax is
tried, and those stray reports of the abandoned attempt -- and only those -- are dropped.

Typed PRNG keys (``jax.random.key``) and raw ``uint32`` keys both round trip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

STATE, META = "state", "meta"
DIGEST = "digest.json"  # inside each step directory: {relative path: [size, blake2b hex]}


class NoReadableCheckpoint(FileNotFoundError):
    """No checkpoint (of the asked step, or at all) that passes its digest and restores."""


def _file_digests(step_dir: Path) -> dict[str, list]:
    """``{path relative to step_dir: [size, blake2b-128 hex]}`` of every file but the digest itself (and
    its temp file, which a save killed while writing it leaves behind)."""
    out = {}
    for f in sorted(step_dir.rglob("*")):
        if f.is_file() and not f.name.startswith(DIGEST):
            with open(f, "rb") as fh:
                h = hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16))
            out[f.relative_to(step_dir).as_posix()] = [f.stat().st_size, h.hexdigest()]
    return out


def write_digest(step_dir: Path) -> None:
    """Record the files of a finished save (written to a temp name, then renamed: never half a digest)."""
    tmp = step_dir / (DIGEST + ".tmp")
    tmp.write_text(json.dumps(_file_digests(step_dir), indent=0, sort_keys=True))
    tmp.replace(step_dir / DIGEST)


def digest_problem(step_dir: Path) -> str | None:
    """Why ``step_dir`` no longer holds what was saved (a missing, changed or added file), or None when it
    matches its digest or has none to check against."""
    path = step_dir / DIGEST
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"its {DIGEST} is unreadable"
    now = _file_digests(step_dir)
    problems = []
    for rel in sorted(saved.keys() | now.keys()):
        if rel not in now:
            problems.append(f"{rel} is missing")
        elif rel not in saved:
            problems.append(f"{rel} was not part of the save")
        elif now[rel][0] != saved[rel][0]:
            problems.append(f"{rel} has {now[rel][0]} bytes, {saved[rel][0]} were saved")
        elif now[rel][1] != saved[rel][1]:
            problems.append(f"{rel} differs from the saved file")
    if len(problems) > 1:
        return f"{problems[0]}, and {len(problems) - 1} more file{'s' if len(problems) > 2 else ''}"
    return problems[0] if problems else None


def _drops_closed_loop_reports(previous):
    """An unraisable hook that ignores ``RuntimeError('Event loop is closed')`` reported without an
    object (tensorstore completing a read of an abandoned orbax restore) and passes all else on."""

    def hook(unraisable):
        exc = unraisable.exc_value
        if (unraisable.object is None and isinstance(exc, RuntimeError)
                and str(exc) == "Event loop is closed"):
            return
        previous(unraisable)

    hook.archcmp_drops_closed_loop = True
    return hook


def _quiet_abandoned_reads() -> None:
    """Install :func:`_drops_closed_loop_reports` (once, for the rest of the process: the stray reports
    of a failed restore come while it unwinds and for a while after)."""
    if not getattr(sys.unraisablehook, "archcmp_drops_closed_loop", False):
        sys.unraisablehook = _drops_closed_loop_reports(sys.unraisablehook)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"checkpoint meta must be JSON-serialisable, got {type(x).__name__}")


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def abstract_target(tree: Any) -> Any:
    """Abstract restore target from a concrete or abstract pytree.

    * ``jax.Array`` -> ``ShapeDtypeStruct`` with the array's sharding (restored onto it);
    * ``ShapeDtypeStruct`` without a sharding (e.g. from ``jax.eval_shape``) -> default device;
    * ``np.ndarray`` / numpy scalars -> ``ShapeDtypeStruct`` on the default device;
    * other leaves (python ints/floats/str) are left as they are (restored as python values).
    """

    def leaf(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            if x.sharding is None:
                return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_default_sharding())
            return x
        if isinstance(x, jax.Array):
            return ocp.utils.to_shape_dtype_struct(x)
        if isinstance(x, (np.ndarray, np.generic)):
            return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=_default_sharding())
        return x

    return jax.tree.map(leaf, tree)


class Checkpointer:
    """``save(step, state, meta)`` / ``restore(step=None, target=...)`` over an orbax CheckpointManager.

    Args:
      directory: checkpoint root (``<run_dir>/checkpoints``); created if missing.
      keep: number of most recent checkpoints kept (older ones are deleted); ``None`` keeps all.
      every_steps: ``save`` only writes when ``step % every_steps == 0`` unless ``force=True``.
    """

    def __init__(self, directory: str | Path, keep: int | None = 3, every_steps: int = 1):
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.every_steps = int(every_steps)
        self._remove_partial_saves()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            cleanup_tmp_directories=True,  # remove partial saves from a killed earlier attempt
            enable_async_checkpointing=False,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE, META))

    def _remove_partial_saves(self) -> None:
        """Delete ``<step>.orbax-checkpoint-tmp-*`` left by a killed save, now and synchronously
        (orbax's own ``cleanup_tmp_directories`` runs in the background until the next save)."""
        if jax.process_index() != 0 or not self.directory.is_dir():
            return
        for tmp in self.directory.glob("*.orbax-checkpoint-tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------------------ queries
    def all_steps(self) -> list[int]:
        self._mgr.reload()
        return sorted(int(s) for s in self._mgr.all_steps())

    def damaged_steps(self) -> dict[int, str]:
        """``{step: what is wrong}`` for the steps whose files no longer match their digest (steps saved
        without a digest are not judged here; orbax may still fail on them)."""
        out = {}
        for s in self.all_steps():
            problem = digest_problem(self.directory / str(s))
            if problem is not None:
                out[s] = problem
        return out

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return step % self.every_steps == 0

    # --------------------------------------------------------------------------------- save
    def save(
        self,
        step: int,
        state: Any,
        meta: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Save ``state`` (pytree of arrays) and ``meta`` (JSON dict) as ``step``.

        Returns False without writing when the step is not due (see ``every_steps``). An existing
        checkpoint at the same step is replaced (e.g. re-running steps after a fallback restore).
        """
        step = int(step)
        if not (force or self.should_save(step)):
            return False
        meta = json.loads(json.dumps(dict(meta or {}), default=_json_default))  # fail early, plain types
        if step in self.all_steps():  # e.g. a corrupt step skipped on resume, now saved anew
            log.debug("replacing existing checkpoint at step %d", step)
            self._mgr.delete(step)
        args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)})
        saved = self._mgr.save(step, args=args, force=True)
        self._mgr.wait_until_finished()
        if saved and jax.process_index() == 0:
            write_digest(self.directory / str(step))
        return bool(saved)

    def wait(self) -> None:
        """Block until pending saves are durable (saves are synchronous; kept for symmetry)."""
        self._mgr.wait_until_finished()

    # ------------------------------------------------------------------------------ restore
    def _restore_step(self, step: int, target: Any) -> tuple[Any, dict]:
        """Restore one step after checking it against its digest; raises on anything unreadable."""
        problem = digest_problem(self.directory / str(step))
        if problem is not None:
            raise NoReadableCheckpoint(f"checkpoint step {step} in {self.directory} is corrupt: {problem}")
        state_args = ocp.args.StandardRestore(None if target is None else abstract_target(target))
        args = ocp.args.Composite(**{STATE: state_args, META: ocp.args.JsonRestore()})
        _quiet_abandoned_reads()  # before: the stray reports start while the failed restore unwinds
        out = self._mgr.restore(step, args=args)
        return out[STATE], dict(out[META] or {})

    def restore(self, step: int | None = None, target: Any = None) -> tuple[Any, dict]:
        """Restore ``(state, meta)``.

        ``target`` is an example pytree (concrete arrays) or an abstract one (``jax.eval_shape`` /
        ``ShapeDtypeStruct`` leaves, optionally with shardings); it fixes tree structure, dtypes,
        shapes and placement. Without a target orbax returns its generic structure (NamedTuples
        become dicts/lists), so pass one for optimizer states.

        With ``step=None`` the newest checkpoint is used; if it is corrupt or cannot be read, older
        ones are tried and a single ``RuntimeWarning`` names the skipped steps, why, and the step
        used. Raises :class:`NoReadableCheckpoint` (a ``FileNotFoundError``) if no checkpoint is
        usable -- its first line names the directory -- or if the asked ``step`` is missing or corrupt.
        """
        if step is not None:
            if int(step) not in self.all_steps():
                raise NoReadableCheckpoint(f"no checkpoint for step {step} in {self.directory}")
            return self._restore_step(int(step), target)
        steps = self.all_steps()
        if not steps:
            raise NoReadableCheckpoint(f"no checkpoint in {self.directory}")
        skipped: list[tuple[int, str]] = []
        for s in reversed(steps):
            try:
                result = self._restore_step(s, target)
            except NoReadableCheckpoint as e:
                skipped.append((s, str(e).split(": ", 1)[1]))
                continue
            except Exception as e:  # noqa: BLE001 - unreadable to orbax: try an older one
                reason = " ".join(str(e).split())
                skipped.append((s, f"{type(e).__name__}: {reason[:160]}{'...' if len(reason) > 160 else ''}"))
                continue
            if len(skipped) == 1:
                (k, why), = skipped
                warnings.warn(f"checkpoint step {k} in {self.directory} is unreadable ({why}); using step {s} "
                              "instead", RuntimeWarning, stacklevel=2)
            elif skipped:
                told = "; ".join(f"step {k}: {why}" for k, why in skipped)
                warnings.warn(f"checkpoint steps {', '.join(str(k) for k, _ in skipped)} in {self.directory} are "
                              f"unreadable ({told}); using step {s} instead", RuntimeWarning, stacklevel=2)
            return result
        raise NoReadableCheckpoint(f"no readable checkpoint in {self.directory} (steps "
                                   f"{', '.join(str(k) for k, _ in skipped)} all corrupt or unreadable)\n"
                                   + "\n".join(f"step {k}: {why}" for k, why in skipped))

    def restore_latest_or_none(self, target: Any = None) -> tuple[Any, dict] | None:
        """``restore(target=target)`` or ``None`` when the directory holds no checkpoint (fresh run)."""
        if self.latest_step() is None:
            return None
        return self.restore(target=target)

    # ------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------- Flax NNX
def nnx_state_to_pytree(module: Any) -> dict:
    """Plain nested dict of a Flax NNX module's state (params, RNG keys/counts, batch stats...)."""
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(module))


def abstract_nnx_pytree(module: Any) -> dict:
    """Abstract restore target matching :func:`nnx_state_to_pytree` of ``module`` (no arrays copied)."""
    return abstract_target(nnx_state_to_pytree(module))


def pytree_into_module(module: Any, pytree: Mapping[str, Any]) -> Any:
    """Write a pytree from :func:`nnx_state_to_pytree` (e.g. a restored one) into ``module`` in place."""
    from flax import nnx

    state = nnx.state(module)
    nnx.replace_by_pure_dict(state, pytree)
    nnx.update(module, state)
    return module
