"""``hiddenkey train`` under ``torchrun --nproc_per_node N``: the process-group backend, and which
process writes.

Every process trains (DDP); only the main process (global rank 0) creates, replaces or writes the run
folder and prints the summary, and the others wait at a barrier until the folder exists. The Trainer
itself saves checkpoints and the adapter from the main process only.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

TRUE = ("", "true", "1", "yes", "y")


def launched_processes() -> int:
    """How many processes the launcher (torchrun, accelerate) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def distributed_defaults(given: set[str], use_cpu: str | None) -> dict[str, Any]:
    """Several CPU processes: ``use_cpu`` and ``ddp_backend=gloo``, unless the user set them.

    Without ``use_cpu``, transformers asks accelerate for an accelerator: on a machine with none it
    starts a gloo process group but trains every process alone (no DDP, no sharded data, no gathered
    logs); with ``use_cpu`` accelerate runs multi-CPU DDP. ``gloo`` keeps it off MPI where that is built.
    """
    if launched_processes() <= 1:
        return {}
    import torch

    if "use_cpu" in given:
        value = "" if use_cpu is None or use_cpu.startswith("--") else use_cpu  # a bare --use_cpu means true
        on_cpu = value.lower() in TRUE
        defaults: dict[str, Any] = {}
    else:
        on_cpu = not torch.cuda.is_available()
        defaults = {"use_cpu": True} if on_cpu else {}
    if on_cpu and "ddp_backend" not in given:
        defaults["ddp_backend"] = "gloo"
    return defaults


def is_main_process(training_args) -> bool:
    return training_args.process_index == 0


@contextlib.contextmanager
def main_process_first(training_args, desc: str) -> Iterator[bool]:
    """Run the block on the main process first, the others after it (a barrier); yields whether this is it."""
    with training_args.main_process_first(local=False, desc=desc):
        yield is_main_process(training_args)
