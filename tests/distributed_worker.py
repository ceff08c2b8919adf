"""One process of ``torchrun ... tests/distributed_worker.py OBSERVE_DIR hiddenkey-train-args...``.

Runs the real ``hiddenkey train`` (``hiddenkey.cli.main.main``) and, to let the test look inside each
rank, records the first DropKey keep mask this rank draws, its LoRA weights after training, its log
history and how accelerate distributed it into ``OBSERVE_DIR/rank{R}.pt``. The observation wraps two functions; the run itself is unchanged.
"""

import os
import sys

import torch

from hiddenkey import ops
from hiddenkey.cli import classification
from hiddenkey.cli.main import main

observed: dict = {}
draw_keep_mask = ops.attention_keep_mask
train_and_save = classification.train_and_save


def recording_keep_mask(*args, **kwargs):
    keep = draw_keep_mask(*args, **kwargs)
    observed.setdefault("first_keep_mask", keep.clone())
    return keep


def recording_train_and_save(trainer, out, run_args):
    result = train_and_save(trainer, out, run_args)
    observed["distributed_type"] = str(trainer.accelerator.distributed_type)
    observed["log_history"] = trainer.state.log_history
    observed["lora"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    return result


if __name__ == "__main__":
    observe_dir, argv = sys.argv[1], sys.argv[2:]
    ops.attention_keep_mask = recording_keep_mask
    classification.train_and_save = recording_train_and_save
    code = main(argv)
    torch.save(observed, os.path.join(observe_dir, f"rank{os.environ.get('RANK', '0')}.pt"))
    sys.exit(code)
