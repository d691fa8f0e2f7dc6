"""Tasks, tokenizers, per-architecture formatters and the data fingerprint (numpy only).

Modules: vocab (special ids), tokenizers, example (Example), tasks (the interface and registry;
arithmetic_tasks, context_tasks, text_tasks + shakespeare, downstream),
packing (fit rule, row packing), noising (MLM, span corruption), formatters (per-arch batch
layouts), fingerprint, pipeline (checkpointable iterator, eval batches).
"""
from archcmp.model.config import ARCHS  # the one list of architectures, re-exported for data users
from archcmp.data.example import Example
from archcmp.data.fingerprint import Fingerprinter, fingerprint
from archcmp.data.formatters import Formatter, format_examples, make_formatter
from archcmp.data.packing import fit_example, pack_rows
from archcmp.data.pipeline import (BatchIterator, FullBatchIterator, batch_rng, epoch_seed, eval_batches, eval_examples,
                                    fixed_batches)
from archcmp.data.tasks import SPLITS, Task, make_task, task_names
# registers the tasks in the registry of ``tasks``; every import of a data module runs this package
# first, so make_task always knows them
from archcmp.data import arithmetic_tasks  # noqa: E402,F401  (addition, multiplication, modular)
from archcmp.data import context_tasks  # noqa: E402,F401  (recall, induction, infill)
from archcmp.data import text_tasks  # noqa: E402,F401  (shakespeare, shakespeare_bpe)
from archcmp.data import downstream  # noqa: E402,F401  (sum_parity, greater, key_present)

__all__ = [
    "ARCHS", "SPLITS", "BatchIterator", "FullBatchIterator", "Example", "Fingerprinter", "Formatter", "Task", "batch_rng",
    "epoch_seed", "eval_batches", "eval_examples", "fingerprint", "fit_example", "fixed_batches", "format_examples",
    "make_formatter", "make_task", "pack_rows", "task_names",
]
from archcmp.data import speech_tasks  # noqa: E402,F401  (shakespeare_speech: which play / which speaker)
