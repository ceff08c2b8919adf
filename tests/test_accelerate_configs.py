"""The shipped accelerate config files load with accelerate's own loader and ask for what the README says.

Running them needs GPUs: on CPU, ``accelerate launch --cpu`` with the FSDP file starts one plain
process (accelerate's FSDP path needs an accelerator), and DeepSpeed is not installed here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).parents[1] / "configs" / "accelerate"


def _load(name: str):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(CONFIGS / name))


def test_fsdp_config():
    config = _load("fsdp.yaml")
    assert str(config.distributed_type) == "DistributedType.FSDP" and config.num_processes == 2
    assert config.fsdp_config["fsdp_version"] == 2
    assert config.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # save_model writes a whole adapter


@pytest.mark.parametrize("name,stage", [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_configs(name, stage):
    config = _load(name)
    assert str(config.distributed_type) == "DistributedType.DEEPSPEED"
    assert config.deepspeed_config["zero_stage"] == stage
    assert config.deepspeed_config["gradient_accumulation_steps"] == 1  # must match --gradient_accumulation_steps (default 1)
