"""hiddenkey: the dropout methods of "LoRA Meets Dropout under a Unified Framework" (Wang et al., 2024)
for Hugging Face transformers models with peft LoRA.

    cfg = hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.1, kl_weight=1.0)
    model = hiddenkey.attach(model, cfg)       # PreTrainedModel or PeftModel
    trainer = hiddenkey.Trainer(model=model, args=training_args, ...)
    hiddenkey.detach(model)

``hiddenkey.TrainerMixin`` adds the consistency loss to any ``transformers.Trainer`` subclass;
``hiddenkey.SFTTrainer`` is TRL's (``pip install hiddenkey[trl]``; imported on first use).
"""

from .attach import (
    AttachError,
    ConsistencyIgnoredWarning,
    attach,
    detach,
    drop_summary,
    drops_disabled,
    get_state,
    is_attached,
)
from .config import CONFIG_NAME, PRESETS, ConfigError, DropoutConfig, DropSpec
from .distributed import seed_rank_mask_stream
from .meter import DropMeter, measure_drops, stop_measuring
from .sites import drop_sites, drop_sites_table, print_drop_sites
from .trainer import Trainer, TrainerMixin, hiddenkey_loss

__version__ = "0.1.0"

__all__ = [
    "AttachError",
    "CONFIG_NAME",
    "ConfigError",
    "ConsistencyIgnoredWarning",
    "DropMeter",
    "DropSpec",
    "DropoutConfig",
    "PRESETS",
    "SFTTrainer",
    "Trainer",
    "TrainerMixin",
    "attach",
    "detach",
    "drop_sites",
    "drop_sites_table",
    "drop_summary",
    "drops_disabled",
    "get_state",
    "hiddenkey_loss",
    "is_attached",
    "measure_drops",
    "print_drop_sites",
    "seed_rank_mask_stream",
    "stop_measuring",
]


def __getattr__(name: str):
    if name == "SFTTrainer":  # TRL is an optional extra: import it only when asked for
        from .integrations.trl import SFTTrainer

        return SFTTrainer
    raise AttributeError(f"module 'hiddenkey' has no attribute {name!r}")
