"""One :class:`ArchSpec` per architecture: the facts that the formatters, decoding and analysis
read instead of comparing architecture names.

| arch      | stacks            | self-attention | train objectives | loss_on            | generates            |
|-----------|-------------------|----------------|------------------|--------------------|----------------------|
| decoder   | one               | causal         | task             | targets (or all)   | left to right, cache |
| prefix_lm | one               | prefix         | task             | targets (or all)   | left to right, cache |
| encdec    | encoder + decoder | bidirectional / causal + cross | task, span | (answer tokens) | left to right, cache |
| encoder   | one               | bidirectional  | task, mlm        | (answer tokens)    | mask filling         |
"""
from __future__ import annotations

from dataclasses import dataclass

from archcmp.model.config import ARCHS


@dataclass(frozen=True)
class ArchSpec:
    name: str
    # the self-attention of the (decoder) stack: "causal" | "prefix" | "bidirectional"
    self_attention: str
    # a separate encoder stack read through cross-attention (its own length ``enc_len``)
    encoder_stack: bool
    # train.objective values this architecture accepts (the first is the default)
    objectives: tuple[str, ...]
    # default ``loss_on`` where the choice exists ("targets" | "all"); None: the loss is on the answer
    default_loss_on: str | None
    # generation: "autoregressive" (greedy / sampling / beam, KV cache) or "mask_fill"
    generation: str

    @property
    def autoregressive(self) -> bool:
        return self.generation == "autoregressive"

    @property
    def mask_fill(self) -> bool:
        """No distribution over what follows a prompt: answers are masks filled in place (MLM)."""
        return self.generation == "mask_fill"

    @property
    def single_causal_stack(self) -> bool:
        """One stack, causal self-attention: the plain decoder-only layout."""
        return self.self_attention == "causal" and not self.encoder_stack

    def encoder_len(self, seq_len: int, enc_len: int | None = None) -> int | None:
        """The encoder stack's length (``task.enc_len``, else ``task.seq_len``); None without one."""
        return (enc_len or seq_len) if self.encoder_stack else None

    @property
    def prompt_is_prefix(self) -> bool:
        """The prompt ``BOS x SEP`` is attended bidirectionally (a ``prefix_mask`` in the batch)."""
        return self.self_attention == "prefix"


ARCH_SPECS: dict[str, ArchSpec] = {
    "encoder": ArchSpec("encoder", "bidirectional", False, ("task", "mlm"), None, "mask_fill"),
    "decoder": ArchSpec("decoder", "causal", False, ("task",), "targets", "autoregressive"),
    "prefix_lm": ArchSpec("prefix_lm", "prefix", False, ("task",), "targets", "autoregressive"),
    "encdec": ArchSpec("encdec", "causal", True, ("task", "span"), None, "autoregressive"),
}
assert tuple(ARCH_SPECS) == ARCHS


def arch_spec(arch: str) -> ArchSpec:
    """The spec of ``arch``; a ValueError naming the value for an unknown one."""
    if arch not in ARCH_SPECS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    return ARCH_SPECS[arch]
