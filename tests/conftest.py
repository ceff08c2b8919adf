"""Tiny models of each supported family, built from configs (no hub)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import transformers

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, intermediate_size=64)


def _encoder(config_cls, model_cls, **extra):
    def build(num_labels=2, layers=2, dropout=0.1):
        cfg = config_cls(
            **COMMON,
            num_hidden_layers=layers,
            num_labels=num_labels,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            max_position_embeddings=64,
            **extra,
        )
        return model_cls(cfg)

    return build


def _decoder(config_cls, model_cls, dropout_keys=("attention_dropout",), **extra):
    def build(num_labels=None, layers=4, dropout=0.1):
        kwargs = dict(COMMON, num_hidden_layers=layers, max_position_embeddings=64, **extra)
        kwargs.update({key: dropout for key in dropout_keys})
        cfg = config_cls(**kwargs)
        if num_labels is not None:
            cfg.num_labels = num_labels
            cfg.pad_token_id = 0
            return getattr(transformers, model_cls.__name__.replace("ForCausalLM", "ForSequenceClassification"))(cfg)
        return model_cls(cfg)

    return build


def _gpt2(num_labels=None, layers=4, dropout=0.1):
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, pad_token_id=0,
    )
    if num_labels is not None:
        cfg.num_labels = num_labels
        return transformers.GPT2ForSequenceClassification(cfg)
    return transformers.GPT2LMHeadModel(cfg)


def _distilbert(num_labels=2, layers=2, dropout=0.1):
    cfg = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=layers, n_heads=4, hidden_dim=64, dropout=dropout,
        attention_dropout=dropout, seq_classif_dropout=dropout, max_position_embeddings=64, num_labels=num_labels,
    )
    return transformers.DistilBertForSequenceClassification(cfg)


def _modernbert(num_labels=2, layers=2, dropout=0.1):
    cfg = transformers.ModernBertConfig(
        **COMMON, num_hidden_layers=layers, num_labels=num_labels, max_position_embeddings=64,
        global_attn_every_n_layers=2, local_attention=4, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        cls_token_id=2, sep_token_id=3, embedding_dropout=dropout, attention_dropout=dropout, mlp_dropout=dropout,
        classifier_dropout=dropout,
    )
    return transformers.ModernBertForSequenceClassification(cfg)


def _opt(num_labels=None, layers=4, dropout=0.1):
    cfg = transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=32, dropout=dropout, attention_dropout=dropout,
        pad_token_id=0, bos_token_id=2, eos_token_id=3,
    )
    if num_labels is not None:
        cfg.num_labels = num_labels
        return transformers.OPTForSequenceClassification(cfg)
    return transformers.OPTForCausalLM(cfg)


FAMILIES = {
    "bert": (_encoder(transformers.BertConfig, transformers.BertForSequenceClassification), ["query", "value"], False),
    "roberta": (
        _encoder(transformers.RobertaConfig, transformers.RobertaForSequenceClassification, pad_token_id=1),
        ["query", "value"],
        False,
    ),
    "gpt2": (_gpt2, ["c_attn"], True),
    "llama": (
        _decoder(transformers.LlamaConfig, transformers.LlamaForCausalLM, num_key_value_heads=2),
        ["q_proj", "v_proj"],
        True,
    ),
    "qwen2": (
        _decoder(transformers.Qwen2Config, transformers.Qwen2ForCausalLM, num_key_value_heads=2),
        ["q_proj", "v_proj"],
        True,
    ),
    "mistral": (
        _decoder(transformers.MistralConfig, transformers.MistralForCausalLM, num_key_value_heads=1, sliding_window=None),
        ["q_proj", "v_proj"],
        True,
    ),
    "gemma": (
        _decoder(transformers.GemmaConfig, transformers.GemmaForCausalLM, num_key_value_heads=2, head_dim=8),
        ["q_proj", "v_proj"],
        True,
    ),
    "distilbert": (_distilbert, ["q_lin", "v_lin"], False),
    "electra": (
        _encoder(transformers.ElectraConfig, transformers.ElectraForSequenceClassification, embedding_size=32),
        ["query", "value"],
        False,
    ),
    "modernbert": (_modernbert, ["Wqkv"], False),
    "phi3": (
        _decoder(
            transformers.Phi3Config, transformers.Phi3ForCausalLM, num_key_value_heads=2, pad_token_id=0,
            bos_token_id=2, eos_token_id=3, dropout_keys=("attention_dropout", "resid_pdrop", "embd_pdrop"),
        ),
        ["qkv_proj"],
        True,
    ),
    "qwen3": (
        _decoder(transformers.Qwen3Config, transformers.Qwen3ForCausalLM, num_key_value_heads=2, head_dim=8),
        ["q_proj", "v_proj"],
        True,
    ),
    "opt": (_opt, ["q_proj", "v_proj"], True),
    "gemma2": (
        # A small softcap so that tanh bends these tiny models' logits: a path that skipped it would show.
        _decoder(
            transformers.Gemma2Config, transformers.Gemma2ForCausalLM, num_key_value_heads=2, head_dim=8,
            attn_logit_softcapping=2.0, query_pre_attn_scalar=8, sliding_window=4,
        ),
        ["q_proj", "v_proj"],
        True,
    ),
}
ENCODERS = ["bert", "roberta", "distilbert", "electra", "modernbert"]
DECODERS = ["gpt2", "llama", "qwen2", "mistral", "gemma", "phi3", "qwen3", "opt", "gemma2"]


def build_model(family: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return FAMILIES[family][0](**kwargs)


def lora(model, family: str, task_type: str | None = None, r: int = 4, init_lora_weights=True):
    from peft import LoraConfig, get_peft_model

    decoder = FAMILIES[family][2]
    is_cls = hasattr(model, "score") or hasattr(model, "classifier")
    task = task_type or ("SEQ_CLS" if is_cls else "CAUSAL_LM")
    cfg = LoraConfig(
        r=r,
        lora_alpha=8,
        target_modules=FAMILIES[family][1],
        task_type=task,
        init_lora_weights=init_lora_weights,
        fan_in_fan_out=family == "gpt2",
    )
    del decoder
    return get_peft_model(model, cfg)


def batch(batch_size=3, length=9, pad=True, seed=1, labels="cls", num_labels=2):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch_size, length), generator=g)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    if pad:
        mask[0, length - 3 :] = 0
        if batch_size > 1:
            mask[1, length - 1 :] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if labels == "cls":
        out["labels"] = torch.randint(0, num_labels, (batch_size,), generator=g)
    elif labels == "reg":
        out["labels"] = torch.rand(batch_size, generator=g) * 5
    elif labels == "lm":
        lab = ids.clone()
        lab[mask == 0] = -100
        lab[:, :2] = -100
        out["labels"] = lab
    return out


@pytest.fixture
def family_model():
    return build_model
