"""Offline tiny causal LMs with a real (trained) tokenizer for the E2E / WebNLG tests.

The tokenizer is a byte-level BPE (GPT-2 style, so decoding is lossless) trained with the
``tokenizers`` library on the fixture texts, with special tokens ``<|endoftext|>`` (eos) and
``<pad>``. :func:`tiny_causal_lm_folder` saves a tiny GPT-2 or LLaMA plus that tokenizer so
that ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained(folder)`` load them offline.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

FIXTURES = Path(__file__).parent / "fixtures"
EOS = "<|endoftext|>"
PAD = "<pad>"


def fixture_texts() -> list[str]:
    """Sources and references of the E2E and WebNLG fixtures (every split)."""
    from hiddenkey.tasks.nlg import load_e2e, load_webnlg

    texts: list[str] = []
    for data in (load_e2e(FIXTURES / "e2e"), load_webnlg(FIXTURES / "webnlg")):
        for examples in data.values():
            for ex in examples:
                texts.append(ex.source)
                texts.extend(ex.references)
    return texts


def build_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 400) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` (default: the fixture texts); eos ``<|endoftext|>``, pad ``<pad>``."""
    corpus = list(texts) if texts is not None else fixture_texts()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)


def tiny_causal_lm(tokenizer, family: str = "gpt2", seed: int = 0, layers: int = 2, dropout: float = 0.0):
    """A randomly initialised tiny GPT-2 or LLaMA sized to ``tokenizer``'s vocabulary."""
    torch.manual_seed(seed)
    ids = dict(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vocab = len(tokenizer)
    if family == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=layers, n_head=4, n_positions=256,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **ids,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(cfg)
    if family == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, attention_dropout=dropout, **ids,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(cfg)
    raise ValueError(f"unknown family {family!r}; expected 'gpt2' or 'llama'")


def tiny_causal_lm_folder(path: str | Path, family: str = "gpt2", texts: Iterable[str] | None = None, seed: int = 0) -> Path:
    """Save a tiny ``family`` model and a trained tokenizer to ``path``; returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts)
    model = tiny_causal_lm(tokenizer, family, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
