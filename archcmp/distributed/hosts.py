"""Processes, devices and cores: device presets, ``jax.distributed`` and CPU shares for local sweeps.

* :class:`DeviceSettings` (``device=cpu|gpu|tpu``): platform, compute / parameter dtypes and XLA
  flags. :func:`start` puts the flags into ``XLA_FLAGS`` / ``LIBTPU_INIT_ARGS`` before JAX creates
  its backends, joins a multi-process job, then checks that JAX found the requested platform.
* :class:`DistributedSettings`: ``jax.distributed.initialize`` from ``distributed.coordinator_address``
  / ``num_processes`` / ``process_id``, or with no arguments when a cluster environment is present
  (SLURM ``srun`` step, Open MPI) so JAX reads the cluster's own variables. ``initialize=true`` always
  calls it (multi-host TPU slices, where JAX asks the TPU metadata), ``false`` never does.
* :func:`use_huge_pages`: the console scripts restart themselves once with glibc's transparent
  huge pages for ``malloc`` (fewer page faults on XLA:CPU's large per-step buffers).
* :func:`claim_cpu_share`: a ``launcher=joblib`` job takes one of ``n_jobs`` disjoint slices of the
  cores (a lock file per slice) and pins every thread of its process to it, so parallel local jobs
  never oversubscribe the CPU whatever thread pools XLA, Eigen or BLAS create.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from archcmp.model.config import ConfigError

log = logging.getLogger(__name__)

PLATFORMS = ("cpu", "gpu", "tpu")
DTYPES = ("float32", "bfloat16", "float16")


def quiet_libraries() -> None:
    """orbax logs every checkpoint step through absl at INFO; keep the run log readable."""
    for name in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---- settings -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceSettings:
    name: str = "cpu"
    platform: str = "cpu"
    dtype: str = "float32"          # compute dtype of the model
    param_dtype: str = "float32"
    xla_flags: tuple[str, ...] = ()
    libtpu_init_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class DistributedSettings:
    initialize: Any = "auto"        # "auto" | True | False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _flags(node: Mapping, key: str) -> tuple[str, ...]:
    value = node.get(key) or []
    if isinstance(value, str) or not all(isinstance(f, str) and f.startswith("--") for f in value):
        raise ConfigError(f"device.{key}={value!r}: must be a list of flags, each starting with '--'")
    return tuple(value)


def parse_device(cfg: Mapping[str, Any]) -> DeviceSettings:
    node = cfg.get("device") or {}
    platform = node.get("platform", "cpu")
    if platform not in PLATFORMS:
        raise ConfigError(f"device.platform={platform!r}: choose one of {list(PLATFORMS)}")
    for key in ("dtype", "param_dtype"):
        if node.get(key, "float32") not in DTYPES:
            raise ConfigError(f"device.{key}={node.get(key)!r}: choose one of {list(DTYPES)}")
    return DeviceSettings(name=str(node.get("name", platform)), platform=platform,
                          dtype=node.get("dtype", "float32"), param_dtype=node.get("param_dtype", "float32"),
                          xla_flags=_flags(node, "xla_flags"), libtpu_init_args=_flags(node, "libtpu_init_args"))


def parse_distributed(cfg: Mapping[str, Any]) -> DistributedSettings:
    node = cfg.get("distributed") or {}
    init = node.get("initialize", "auto")
    if init not in ("auto", True, False):
        raise ConfigError(f"distributed.initialize={init!r}: choose auto, true or false")
    addr, n, pid = node.get("coordinator_address"), node.get("num_processes"), node.get("process_id")
    if addr is not None and (not isinstance(addr, str) or ":" not in addr):
        raise ConfigError(f"distributed.coordinator_address={addr!r}: must be 'host:port'")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"distributed.num_processes={n!r}: must be a positive integer")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 0
                            or (n is not None and pid >= n)):
        raise ConfigError(f"distributed.process_id={pid!r}: must be an integer in [0, num_processes={n})")
    if addr is not None and (n is None or pid is None):
        missing = "num_processes" if n is None else "process_id"
        raise ConfigError(f"distributed.{missing}: missing; needed with distributed.coordinator_address={addr!r}")
    return DistributedSettings(initialize=init, coordinator_address=addr, num_processes=n, process_id=pid)


# ---- start-up ---------------------------------------------------------------------------------
def backends_started() -> bool:
    """Whether JAX already created its backends in this process (flags can no longer change)."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover - JAX moved it: assume started
        return True


def _add_env_flags(var: str, flags: tuple[str, ...]) -> None:
    current = os.environ.get(var, "").split()
    names = {f.split("=")[0] for f in current}
    extra = [f for f in flags if f.split("=")[0] not in names]  # the user's own setting wins
    if extra:
        os.environ[var] = " ".join(current + extra)


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def use_huge_pages() -> None:
    """Re-execute this console script once with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``.

    XLA:CPU allocates a step's temporaries afresh on every call; glibc serves the large ones with
    new mappings, so every step faults in hundreds of MB page by page (about 100k minor faults and
    0.35 s of system time per step of a 3M-parameter model at 2,048 tokens, 250k and 0.9 s at
    20M). With transparent huge pages for malloc that drops to under 1k faults and 0.1-0.2 s. The
    tunable is read only when a process starts, hence the restart; it happens before anything
    else runs, and children (joblib workers, SLURM jobs) inherit the variable. No-op off Linux
    glibc >= 2.35, when the variable already mentions the tunable, or with ``ARCHCMP_NO_HUGE_PAGES=1``.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or os.environ.get("ARCHCMP_NO_HUGE_PAGES") == "1":
        return
    lib, version = platform.libc_ver()
    try:
        new_enough = lib == "glibc" and tuple(int(x) for x in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        new_enough = False
    if not (sys.platform.startswith("linux") and new_enough):
        return
    os.environ["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, HUGE_PAGES_TUNABLE) if t)
    sys.stdout.flush()
    sys.stderr.flush()
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    os.execv(sys.executable, [sys.executable, *argv[1:]])


def cluster_env() -> str | None:
    """Name of a multi-process cluster environment JAX can read, or None."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ:
        return "slurm"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    return None


def start(device: DeviceSettings, dist: DistributedSettings) -> None:
    """Flags, multi-process start and platform check, in that order; before anything compiles."""
    import jax

    quiet_libraries()  # JAX's INFO lines on the backends it could not start are no part of a one-line error
    fresh = not backends_started()
    if fresh:
        _add_env_flags("XLA_FLAGS", device.xla_flags)
        _add_env_flags("LIBTPU_INIT_ARGS", device.libtpu_init_args)
        if device.platform == "cpu" and not os.environ.get("JAX_PLATFORMS"):
            jax.config.update("jax_platforms", "cpu")
    elif device.xla_flags and not all(f in os.environ.get("XLA_FLAGS", "") for f in device.xla_flags):
        log.warning("JAX is already running in this process: device.xla_flags not applied")
    wanted = dist.initialize is True or (dist.initialize == "auto" and (dist.coordinator_address or cluster_env()))
    if wanted and not jax.distributed.is_initialized():
        if not fresh:
            key = "distributed.coordinator_address" if dist.coordinator_address else "distributed.initialize"
            raise ConfigError(f"{key}: JAX already started in this process; a multi-process run needs a fresh process")
        jax.distributed.initialize(coordinator_address=dist.coordinator_address, num_processes=dist.num_processes,
                                   process_id=dist.process_id)
    found = jax.default_backend()
    if found != device.platform:
        raise ConfigError(f"device={device.name!r}: JAX found no {device.platform} (its backend is {found}); "
                            f"use device={found} or install JAX for {device.platform}")


def is_primary() -> bool:
    """Process 0 writes the run records and talks to wandb. Before JAX started its backends (a run that
    stopped on a config error) this is the only process: JAX is not started just to ask."""
    if not backends_started():
        return True
    import jax

    try:
        return jax.process_index() == 0
    except Exception:  # noqa: BLE001 - no backend at all: a single process
        return True


# ---- CPU shares for parallel local jobs --------------------------------------------------------
_ALL_CORES: list[int] | None = None
_HELD: "CpuShare | None" = None


@dataclass
class CpuShare:
    slot: int
    cores: list[int]
    _fd: int

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1


def _slot_dir(scope: str | Path) -> Path:
    tag = hashlib.sha1(str(Path(scope).absolute()).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"archcmp-cpu-{os.getuid()}" / tag
    path.mkdir(parents=True, exist_ok=True)
    return path


def acquire_cpu_share(n_jobs: int, scope: str | Path, cores: list[int] | None = None,
                      timeout: float | None = None) -> CpuShare:
    """Take a free slice of ``cores`` (one of ``min(n_jobs, len(cores))`` disjoint slices).

    Slices are claimed with ``flock`` on files named after the sweep (``scope``), so jobs of one
    sweep in different processes never get the same slice; when all are taken the call waits.
    """
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    n_slots = max(1, min(n_jobs, len(cores)))
    per = len(cores) // n_slots
    folder = _slot_dir(scope)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        for slot in range(n_slots):
            fd = os.open(folder / f"slots{n_slots}-{slot}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return CpuShare(slot, cores[slot * per:(slot + 1) * per], fd)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no free CPU share among {n_slots} after {timeout}s")
        time.sleep(0.2)


def pin_process(cores: list[int]) -> None:
    """Restrict every existing thread of this process (and so all later ones) to ``cores``."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):  # thread ended meanwhile
            pass
    os.sched_setaffinity(0, cores)


def claim_cpu_share(n_jobs: int, scope: str | Path) -> CpuShare:
    """For a ``launcher=joblib`` job: release this process's previous share, take a free one, pin to it,
    and size the thread pools started from now on (XLA, OpenMP, BLAS) to it."""
    global _ALL_CORES, _HELD
    if _ALL_CORES is None:
        _ALL_CORES = sorted(os.sched_getaffinity(0))  # before this process was ever pinned
    if n_jobs <= 0:  # joblib: -1 = all cores, -2 = all but one, ...
        n_jobs = max(1, len(_ALL_CORES) + 1 + n_jobs)
    release_cpu_share()
    _HELD = acquire_cpu_share(n_jobs, scope, _ALL_CORES)
    pin_process(_HELD.cores)
    threads = str(len(_HELD.cores))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = threads
    if len(_HELD.cores) == 1:
        _add_env_flags("XLA_FLAGS", ("--xla_cpu_multi_thread_eigen=false",))
    return _HELD


def release_cpu_share() -> None:
    global _HELD
    if _HELD is not None:
        _HELD.release()
        _HELD = None
