"""Prompt format, decoding and scoring for E2E and WebNLG (Hu et al.'s LoRA NLG setup).

Sequence layout (``examples/NLG/src/gpt2_encode.py --add_bos --add_eos`` in the LoRA repo)::

    [bos]  source tokens  <eos>  target tokens  <eos>
    |------ prompt (labels -100) -|-- supervised ------|

* The separator between the source (the linearised MR / triples) and the target is the
  tokenizer's **eos token** (GPT-2: ``<|endoftext|>``, id 50256, which the LoRA repo adds as
  "bos" after the context); the target is encoded with a leading space (``enc.encode(' ' +
  completion)``) unless the tokenizer already marks word starts itself (SentencePiece
  tokenizers such as LLaMA's, where the space would become an extra token), and ends with eos.
* A ``bos`` token is prepended only when the tokenizer has one that differs from eos (LLaMA's
  ``<s>``); GPT-2's bos *is* its eos, and the LoRA repo starts with the context directly.
* Prompts and targets are encoded separately at the id level (never by tokenising a string
  that contains the eos text), so training and generation see exactly the same prompt ids.
* Generation left-pads batches, decodes only the new tokens and cuts at the first eos.

Decoding defaults (:func:`paper_generation_settings`): GPT-2 follows Hu et al. (Table 11 of the
LoRA paper: beam 10, no-repeat n-gram 4, length penalty 0.9 on E2E and 0.8 on WebNLG,
repetition penalty 1.0, ``--eval_len 64``); LLaMA-style models use greedy decoding, which
Wang et al. report "empirically outperforms" beam search for LLaMA2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..tasks.nlg import NLGExample
from .arguments import DEFAULT_GENERATION_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS, GenerationSettings

IGNORE_INDEX = -100

#: ``model_type`` values decoded like GPT-2 (beam search); every other family is decoded like LLaMA2.
GPT2_STYLE_MODEL_TYPES: frozenset[str] = frozenset({"gpt2", "gpt_neo", "gptj", "gpt_bigcode"})

_TASK_ALIASES = {"e2e": "e2e", "e2e_nlg": "e2e", "webnlg": "webnlg", "web_nlg": "webnlg"}
_PAPER_FIELDS = ("num_beams", "no_repeat_ngram_size", "length_penalty", "repetition_penalty", "max_new_tokens")


# --------------------------------------------------------------------------------------------
# decoding settings


def _task_key(task_name: str) -> str:
    key = _TASK_ALIASES.get(str(task_name).strip().lower())
    if key is None:
        raise ValueError(f"no generation settings for task {task_name!r}; expected 'e2e' or 'webnlg'")
    return key


def is_gpt2_style(decoder_style: str | None) -> bool:
    """True for GPT-2-like decoders (``gpt2``, ``gpt2-medium``, GPT-Neo/J, BigCode), decoded with beam search."""
    style = str(decoder_style or "").strip().lower()
    return style in GPT2_STYLE_MODEL_TYPES or style.startswith("gpt2") or style.rsplit("/", 1)[-1].startswith("gpt2")


def paper_generation_settings(task_name: str, decoder_style: str) -> GenerationSettings:
    """The paper's decoding setting for ``task_name`` ("e2e"/"webnlg") and a model family.

    ``decoder_style`` is a ``config.model_type`` (or a model name): GPT-2-like models use Hu et
    al.'s beam search (beam 10, no-repeat 4-grams, length penalty 0.9 on E2E / 0.8 on WebNLG,
    repetition penalty 1.0); all others (llama, mistral, qwen2, gemma, ...) use greedy decoding
    without length penalty or n-gram blocking. ``max_new_tokens`` is 64 in both cases.
    """
    task = _task_key(task_name)
    if is_gpt2_style(decoder_style):
        return GenerationSettings(
            num_beams=10,
            no_repeat_ngram_size=4,
            length_penalty=0.9 if task == "e2e" else 0.8,
            repetition_penalty=1.0,
            max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
            do_sample=False,
            generation_batch_size=DEFAULT_GENERATION_BATCH_SIZE,
        )
    return GenerationSettings(
        num_beams=1,
        no_repeat_ngram_size=0,
        length_penalty=1.0,
        repetition_penalty=1.0,
        max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
        do_sample=False,
        generation_batch_size=DEFAULT_GENERATION_BATCH_SIZE,
    )


def resolve(settings: GenerationSettings | None, task_name: str, model_type: str) -> GenerationSettings:
    """A copy of ``settings`` with every ``None`` field taken from :func:`paper_generation_settings`."""
    paper = paper_generation_settings(task_name, model_type)
    if settings is None:
        out = paper
    else:
        filled = {
            f.name: (getattr(paper, f.name) if getattr(settings, f.name) is None else getattr(settings, f.name))
            for f in dataclasses.fields(GenerationSettings)
        }
        out = GenerationSettings(**filled)
    _check_settings(out)
    return out


def _check_settings(s: GenerationSettings) -> None:
    problems = []
    if s.num_beams is None or s.num_beams < 1:
        problems.append(f"num_beams must be >= 1, got {s.num_beams}")
    if s.no_repeat_ngram_size is None or s.no_repeat_ngram_size < 0:
        problems.append(f"no_repeat_ngram_size must be >= 0, got {s.no_repeat_ngram_size}")
    if s.repetition_penalty is None or s.repetition_penalty <= 0:
        problems.append(f"repetition_penalty must be > 0, got {s.repetition_penalty}")
    if s.length_penalty is None:
        problems.append("length_penalty is unset")
    if s.max_new_tokens is None or s.max_new_tokens < 1:
        problems.append(f"max_new_tokens must be >= 1, got {s.max_new_tokens}")
    if s.generation_batch_size is not None and s.generation_batch_size < 1:
        problems.append(f"generation_batch_size must be >= 1, got {s.generation_batch_size}")
    if problems:
        raise ValueError("invalid generation settings: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# prompt format and training features


def _eos(tokenizer) -> tuple[str, int]:
    if tokenizer.eos_token is None or tokenizer.eos_token_id is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no eos token; E2E/WebNLG use it to separate source and target "
            "and to end the target (set tokenizer.eos_token)"
        )
    return tokenizer.eos_token, int(tokenizer.eos_token_id)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, or its eos id when it has no pad token (GPT-2, LLaMA).

    Padding with eos is safe: padded positions have attention mask 0 and label -100, and
    generated text is cut at the first eos.
    """
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return _eos(tokenizer)[1]


def format_prompt(source: str, separator: str = "<|endoftext|>") -> str:
    """The prompt as text: the source followed by the separator, the tokenizer's eos token.

    ``separator`` defaults to GPT-2's eos; pass ``tokenizer.eos_token`` for other models. This is
    for display and logs; the model is fed :func:`encode_prompt`'s ids (the same sequence, built
    at the id level so that the separator is always the single eos id).
    """
    return f"{source}{separator}"


def _bos_prefix(tokenizer) -> list[int]:
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    if bos is None or bos == eos:
        return []
    return [int(bos)]


def _target_prefix(tokenizer) -> str:
    """``" "`` when the tokenizer keeps a leading space inside the first word's token (byte-level BPE).

    The LoRA repo encodes ``' ' + completion`` for GPT-2. SentencePiece tokenizers that add the
    word-start marker themselves would turn that space into an extra token, so they get none.
    """
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    spaced = tokenizer(" a", add_special_tokens=False)["input_ids"]
    return " " if len(spaced) == len(plain) else ""


def encode_prompt(tokenizer, source: str) -> list[int]:
    """Token ids of the prompt: ``[bos] + source ids + [eos]`` (the eos is the separator)."""
    _, eos_id = _eos(tokenizer)
    if not source or not source.strip():
        raise ValueError("empty source text")
    ids = tokenizer(source, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"source {source!r} encodes to no tokens")
    return _bos_prefix(tokenizer) + list(ids) + [eos_id]


def encode_training_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int) -> list[dict[str, list[int]]]:
    """Features ``{input_ids, attention_mask, labels}`` for causal-LM training on ``(source, target)`` pairs.

    ``input_ids = encode_prompt(source) + ids(" " + target) + [eos]``; ``labels`` are -100 on
    the prompt (bos, source and separator) and equal the ids on the target and its final eos,
    so the loss covers the target only. Sequences longer than ``max_length`` are cut on the
    target side first (its tail, including the final eos, goes); when the prompt alone leaves
    no room for one target token, the source is cut from the left (the bos and the separator
    are kept) so that exactly one target token remains. Empty inputs raise ``ValueError``.
    """
    if not pairs:
        raise ValueError("no (source, target) pairs to encode")
    _, eos_id = _eos(tokenizer)
    bos = _bos_prefix(tokenizer)
    min_length = len(bos) + 3  # bos + one source token + separator + one target token
    if max_length < min_length:
        raise ValueError(f"max_length={max_length} is too short; need at least {min_length} tokens")
    prefix = _target_prefix(tokenizer)
    features = []
    for index, (source, target) in enumerate(pairs):
        if not target or not target.strip():
            raise ValueError(f"pair {index}: empty target text (source {source!r})")
        try:
            prompt = encode_prompt(tokenizer, source)
        except ValueError as exc:
            raise ValueError(f"pair {index}: {exc}") from None
        target_ids = list(tokenizer(prefix + target, add_special_tokens=False)["input_ids"]) + [eos_id]
        if len(prompt) + len(target_ids) > max_length:
            room = max_length - len(prompt)
            if room < 1:
                keep = max_length - 1 - len(bos) - 1  # source tokens that fit with bos, separator and 1 target token
                prompt = bos + prompt[len(prompt) - 1 - keep : -1] + [eos_id]
                room = 1
            target_ids = target_ids[:room]
        input_ids = prompt + target_ids
        features.append({
            "input_ids": input_ids,
            "attention_mask": [1] * len(input_ids),
            "labels": [IGNORE_INDEX] * len(prompt) + target_ids,
        })
    return features


class CausalLMCollator:
    """Right-pads ``input_ids`` with ``pad_token_id``, ``attention_mask`` with 0 and ``labels`` with -100.

    Features need ``input_ids`` and ``labels``; ``attention_mask`` defaults to all ones. With
    ``pad_to_multiple_of`` the batch length is rounded up. Returns LongTensors.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("CausalLMCollator needs a pad_token_id (use the eos id when the tokenizer has no pad token)")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("empty batch")
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids, mask, labels = [], [], []
        for f in features:
            row = list(f["input_ids"])
            lab = list(f["labels"])
            att = list(f.get("attention_mask") or [1] * len(row))
            if not (len(row) == len(lab) == len(att)):
                raise ValueError("input_ids, labels and attention_mask of a feature differ in length")
            pad = width - len(row)
            ids.append(row + [self.pad_token_id] * pad)
            mask.append(att + [0] * pad)
            labels.append(lab + [IGNORE_INDEX] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


# --------------------------------------------------------------------------------------------
# generation


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class GeneratedNoRepeatNGramLogitsProcessor(LogitsProcessor):
    """Forbid repeating an n-gram of the *generated* tokens (fairseq / Hu et al.'s ``no_repeat_ngram_size``).

    transformers' own ``no_repeat_ngram_size`` also counts the prompt, which would forbid copying
    any n-gram of the source (names, multi-token values) into the text; the LoRA repo's
    ``gpt2_beam.py`` bans only n-grams of its generated ``history``. ``prompt_length`` is the
    (left-padded) prompt width, so generated tokens are ``input_ids[:, prompt_length:]``.
    """

    def __init__(self, ngram_size: int, prompt_length: int):
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
        self.ngram_size = int(ngram_size)
        self.prompt_length = int(prompt_length)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = self.ngram_size
        generated = input_ids[:, self.prompt_length :]
        length = generated.shape[1]
        if length < n:
            return scores
        for row, tokens in enumerate(generated.tolist()):
            prefix = tokens[length - n + 1 :]
            banned = {tokens[j + n - 1] for j in range(length - n + 1) if tokens[j : j + n - 1] == prefix}
            if banned:
                scores[row, sorted(banned)] = float("-inf")
        return scores


def generate_texts(
    model,
    tokenizer,
    sources: Sequence[str],
    settings: GenerationSettings,
    batch_size: int | None = None,
    *,
    show_progress: bool = True,
) -> list[str]:
    """Generate one text per source with a causal LM (a ``PreTrainedModel`` or a peft ``PeftModel``).

    Prompts are :func:`encode_prompt` ids, left-padded per batch (pad id: the tokenizer's pad
    token, else eos) with an attention mask, so every prompt ends right before the first new
    token. ``no_repeat_ngram_size`` applies to the generated tokens only
    (:class:`GeneratedNoRepeatNGramLogitsProcessor`, as in Hu et al.); ``repetition_penalty`` is
    transformers' (it also counts prompt tokens; 1.0, the paper's value, turns it off).
    ``settings`` should be complete (see :func:`resolve`); ``batch_size`` defaults to
    ``settings.generation_batch_size`` or 8. Inputs are processed longest first and returned in
    the given order. Only the new tokens are decoded, cut at the first eos, special tokens
    skipped and whitespace stripped. The model runs in eval mode under ``torch.inference_mode``
    and gets its previous train/eval mode back afterwards; the tokenizer is not modified.
    """
    from tqdm.auto import tqdm

    missing = [name for name in _PAPER_FIELDS if getattr(settings, name) is None]
    if missing:
        raise ValueError(f"generation settings {missing} are unset; call resolve(settings, task, model_type) first")
    _check_settings(settings)
    if not sources:
        return []
    _, eos_id = _eos(tokenizer)
    pad_id = pad_token_id(tokenizer)
    size = batch_size or settings.generation_batch_size or DEFAULT_GENERATION_BATCH_SIZE
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")

    prompts = [encode_prompt(tokenizer, s) for s in sources]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    kwargs: dict[str, Any] = dict(
        num_beams=settings.num_beams,
        length_penalty=settings.length_penalty,
        repetition_penalty=settings.repetition_penalty,
        max_new_tokens=settings.max_new_tokens,
        do_sample=bool(settings.do_sample),
        pad_token_id=pad_id,
        eos_token_id=eos_id,
    )
    if settings.num_beams > 1:
        kwargs["early_stopping"] = True

    device = _model_device(model)
    was_training = model.training
    model.eval()
    outputs: list[str | None] = [None] * len(prompts)
    try:
        with torch.inference_mode(), tqdm(total=len(prompts), desc="generate", disable=not show_progress) as bar:
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                width = max(len(prompts[i]) for i in chunk)
                ids = [[pad_id] * (width - len(prompts[i])) + prompts[i] for i in chunk]
                mask = [[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk]
                enc = {
                    "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
                    "attention_mask": torch.tensor(mask, dtype=torch.long, device=device),
                }
                processors = LogitsProcessorList()
                if settings.no_repeat_ngram_size:
                    processors.append(GeneratedNoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size, width))
                generated = model.generate(**enc, **kwargs, no_repeat_ngram_size=0, logits_processor=processors)
                for row, i in zip(generated[:, width:].tolist(), chunk):
                    if eos_id in row:
                        row = row[: row.index(eos_id)]
                    outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
                bar.update(len(chunk))
    finally:
        model.train(was_training)
    return [o if o is not None else "" for o in outputs]


# --------------------------------------------------------------------------------------------
# scoring and predictions


def evaluate_generation(task_name: str, examples: Sequence[NLGExample], hypotheses: Sequence[str]) -> dict[str, float]:
    """Score hypotheses against all references of their examples.

    ``e2e``: :func:`~hiddenkey.metrics.generation.e2e_metrics` (keys ``bleu``, ``nist``,
    ``meteor``, ``rouge_l``, ``cider``). ``webnlg``:
    :func:`~hiddenkey.metrics.generation.webnlg_metrics` on all examples and on the seen /
    unseen ones (``meta["seen"]``), keys ``{all,seen,unseen}_{bleu,meteor,ter}``; an empty
    subset is skipped (examples without ``meta["seen"]`` count only for ``all``).
    """
    from ..metrics.generation import e2e_metrics, webnlg_metrics

    task = _task_key(task_name)
    if len(examples) != len(hypotheses):
        raise ValueError(f"{len(examples)} examples but {len(hypotheses)} hypotheses")
    if not examples:
        raise ValueError("no examples to evaluate")
    refs = [list(ex.references) for ex in examples]
    hyps = list(hypotheses)
    if task == "e2e":
        return e2e_metrics(hyps, refs)
    subsets = {
        "all": list(range(len(examples))),
        "seen": [i for i, ex in enumerate(examples) if ex.meta.get("seen") is True],
        "unseen": [i for i, ex in enumerate(examples) if ex.meta.get("seen") is False],
    }
    out: dict[str, float] = {}
    for name, idx in subsets.items():
        if not idx:
            continue
        scores = webnlg_metrics([hyps[i] for i in idx], [refs[i] for i in idx])
        out.update({f"{name}_{key}": value for key, value in scores.items()})
    return out
