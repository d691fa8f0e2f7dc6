"""Reading offline wandb runs back (shared by the tracker and trainer tests)."""
import json
import struct
import time
from pathlib import Path


def _read_wandb_records(path: Path):
    """Parse a ``.wandb`` transaction log with wandb's own protobuf ``Record`` type.

    wandb>=0.2x dropped the Python ``wandb.sdk.internal.datastore`` reader (the writer lives in the
    Go ``wandb-core``), so this reads the leveldb-log framing directly: a 7-byte file header
    (``:W&B`` + magic 0xBEE1 + version), then 32 KiB blocks of chunks, each with a 7-byte header
    (crc32c u32, length u16, type u8: 1=FULL 2=FIRST 3=MIDDLE 4=LAST).
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        if pos + 7 + length > len(data):  # still being written
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)  # wandb-core fills nested_key



def _records(run_dir: Path, timeout: float):
    """Records of the single offline wandb run under ``run_dir`` (waits for the run's exit
    record: wandb-core may flush after the writer process returned)."""
    files = list(Path(run_dir).rglob("run-*.wandb"))
    assert len(files) == 1, files
    deadline = time.monotonic() + timeout
    while True:
        records = _read_wandb_records(files[0])
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def offline_run_record(run_dir: Path, timeout: float = 30.0):
    """The ``run`` record (name, group, tags, config) of the single offline wandb run under ``run_dir``."""
    return next(r.run for r in _records(run_dir, timeout) if r.WhichOneof("record_type") == "run")


def offline_summary(run_dir: Path, timeout: float = 30.0) -> dict:
    """The run summary as the offline run recorded it (later updates win)."""
    out: dict = {}
    for r in _records(run_dir, timeout):
        if r.WhichOneof("record_type") == "summary":
            out.update({_key(it): json.loads(it.value_json) for it in r.summary.update})
    return out


def offline_history(run_dir: Path, timeout: float = 30.0) -> dict[int, dict]:
    """step -> logged values of the single offline wandb run under ``run_dir``."""
    records = _records(run_dir, timeout)
    out: dict[int, dict] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {_key(it): json.loads(it.value_json) for it in r.history.item}
            out.setdefault(int(row["_step"]), {}).update(row)
    return out
