"""Data fingerprint: a sha256 chain over the example stream.

For each example the chain absorbs ``len(inputs), len(targets)`` (int64 little endian) and the
int32 little-endian bytes of inputs and targets:

    h_0 = sha256(b"archcmp-data-v1"),   h_k = sha256(h_{k-1} || n || m || inputs || targets)

Chaining (instead of one running hashlib object) keeps the state a 32-byte digest, so the
pipeline can checkpoint it as JSON and a resumed run reports the same fingerprint. The hash sees
only examples, never the architecture, so the same stream gives the same hex for every arch.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

from archcmp.data.example import Example

_INIT = hashlib.sha256(b"archcmp-data-v1").digest()


class Fingerprinter:
    """Incremental fingerprint; ``state()``/``from_state`` make it checkpointable."""

    def __init__(self, digest: bytes = _INIT, count: int = 0):
        self._digest = digest
        self.count = count

    def update(self, ex: Example) -> "Fingerprinter":
        h = hashlib.sha256(self._digest)
        h.update(np.array([ex.inputs.size, ex.targets.size], "<i8").tobytes())
        h.update(ex.inputs.astype("<i4").tobytes())
        h.update(ex.targets.astype("<i4").tobytes())
        self._digest = h.digest()
        self.count += 1
        return self

    def update_many(self, examples: Iterable[Example]) -> "Fingerprinter":
        for ex in examples:
            self.update(ex)
        return self

    def absorb(self, digest: bytes, count: int) -> "Fingerprinter":
        """Chain in a whole block of ``count`` examples by its own digest (full-batch epochs)."""
        self._digest = hashlib.sha256(self._digest + digest).digest()
        self.count += int(count)
        return self

    def hexdigest(self) -> str:
        return self._digest.hex()

    def state(self) -> dict:
        return {"digest": self._digest.hex(), "count": self.count}

    @classmethod
    def from_state(cls, state: dict) -> "Fingerprinter":
        return cls(bytes.fromhex(state["digest"]), int(state["count"]))


def fingerprint(examples: Iterable[Example]) -> str:
    """Hex sha256-chain fingerprint of an example stream."""
    return Fingerprinter().update_many(examples).hexdigest()
