"""hiddenkey: the dropout methods of "LoRA Meets Dropout under a Unified Framework" (Wang et al., 2024)
for Hugging Face transformers models with peft LoRA.

    cfg = hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.1, kl_weight=1.0)
    model = hiddenkey.attach(model, cfg)       # PreTrainedModel or PeftModel
    trainer = hiddenkey.Trainer(model=model, args=training_args, ...)
    hiddenkey.detach(model)
"""

from .attach import AttachError, attach, detach, drop_summary, drops_disabled, get_state, is_attached
from .config import CONFIG_NAME, PRESETS, ConfigError, DropoutConfig, DropSpec
from .meter import DropMeter, measure_drops, stop_measuring
from .sites import drop_sites, drop_sites_table, print_drop_sites
from .trainer import Trainer, hiddenkey_loss

__version__ = "0.1.0"

__all__ = [
    "AttachError",
    "CONFIG_NAME",
    "ConfigError",
    "DropMeter",
    "DropSpec",
    "DropoutConfig",
    "PRESETS",
    "Trainer",
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
    "stop_measuring",
]
