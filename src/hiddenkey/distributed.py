"""Several processes: each rank draws its own dropout masks.

Masks come from torch's default generator inside the forward (gradient checkpointing restores exactly
that generator, so a private one would recompute different masks). The HF ``Trainer`` seeds every
rank alike, so without an offset every rank would drop the same positions of its own batch.
:func:`seed_rank_mask_stream` reseeds the default generator of rank ``r > 0`` once, when training
starts, with ``initial_seed + r * offset`` (nanoGPT's ``seed_offset = ddp_rank``; accelerate's
``set_seed(device_specific=True)``). Called at ``on_train_begin`` it comes after everything the
seed fixed before training: model and LoRA initialisation, the data order (accelerate's sampler
keeps its own seeded generator) and the per-rank RNG states a resumed run restores afterwards. Rank 0
(and every single-process run) is left exactly as it was. Python's ``random`` and NumPy are untouched.
"""

from __future__ import annotations

import torch


def process_rank() -> int:
    """Global rank of this process (0 outside ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def seed_rank_mask_stream(offset: int, rank: int | None = None) -> int | None:
    """Reseed torch's default generators on rank ``r > 0`` with ``torch.initial_seed() + r * offset``.

    Returns the new seed, or ``None`` where nothing changed (rank 0, or ``offset == 0``).
    """
    rank = process_rank() if rank is None else rank
    if rank == 0 or offset == 0:
        return None
    seed = (torch.initial_seed() + rank * offset) % 2**63
    torch.manual_seed(seed)  # CPU and every accelerator's default generator
    return seed
