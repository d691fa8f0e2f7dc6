"""One :class:`ArchSpec` per architecture: the facts that the formatters, decoding and analysis
read instead of comparing architecture names.

| arch      | stacks            | self-attention | train objectives | loss_on            | generates            |
|-----------|-------------------|----------------|------------------|--------------------|----------------------|
| decoder   | one               | causal         | task             | targets (or all)   | left to right, cache |
| prefix_lm | one               | prefix         | task             | targets (or all)   | left to right, cache |
| encdec    | encoder + decoder | bidirectional / causal + cross | task, span | (answer tokens) | left to right, cache |
| encoder   | one               | bidirectional  | task, mlm        | (answer tokens)    | mask filling         |

Fine-tuning (:mod:`archcmp.training.finetune`):

| arch      | classifier heads (+ generate) | the last token           | mean-pools       | auxiliary LM objective |
|-----------|-------------------------------|--------------------------|------------------|------------------------|
| decoder   | last, mean                    | SEP after the prompt     | the prompt       | next token (task)      |
| prefix_lm | last, mean, first             | SEP after the prompt     | the prompt       | next token (task)      |
| encdec    | last, mean                    | the decoder's BOS        | encoder memory   | span corruption        |
| encoder   | first, mean, last             | SEP after the prompt     | the prompt       | masked LM              |

A causal decoder's first token has seen nothing but BOS, so ``first`` is refused for it.
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
    # fine-tuning: the hidden states a linear classifier may read ("first", "last", "mean")
    classifier_heads: tuple[str, ...] = ("last", "mean")
    # fine-tuning: the objective of the auxiliary LM loss on a task's inputs (GPT-1's λ term)
    lm_objective: str = "task"

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
    def finetune_heads(self) -> tuple[str, ...]:
        """Every ``finetune.head`` this architecture takes: its classifier heads and ``generate``."""
        return (*self.classifier_heads, "generate")

    @property
    def prompt_is_prefix(self) -> bool:
        """The prompt ``BOS x SEP`` is attended bidirectionally (a ``prefix_mask`` in the batch)."""
        return self.self_attention == "prefix"


ARCH_SPECS: dict[str, ArchSpec] = {
    "encoder": ArchSpec("encoder", "bidirectional", False, ("task", "mlm"), None, "mask_fill",
                        ("first", "mean", "last"), "mlm"),
    "decoder": ArchSpec("decoder", "causal", False, ("task",), "targets", "autoregressive", ("last", "mean"), "task"),
    "prefix_lm": ArchSpec("prefix_lm", "prefix", False, ("task",), "targets", "autoregressive",
                          ("last", "mean", "first"), "task"),
    "encdec": ArchSpec("encdec", "causal", True, ("task", "span"), None, "autoregressive", ("last", "mean"), "span"),
}
assert tuple(ARCH_SPECS) == ARCHS


def arch_spec(arch: str) -> ArchSpec:
    """The spec of ``arch``; a ValueError naming the value for an unknown one."""
    if arch not in ARCH_SPECS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    return ARCH_SPECS[arch]
