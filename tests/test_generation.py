"""E2E / WebNLG causal-LM pipeline: encoding, collation, decoding settings, generation, scoring."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers

from hiddenkey.cli.arguments import GenerationSettings
from hiddenkey.cli.decoding import (
    IGNORE_INDEX,
    CausalLMCollator,
    encode_prompt,
    encode_training_pairs,
    evaluate_generation,
    format_prompt,
    generate_texts,
    paper_generation_settings,
    resolve,
)
from hiddenkey.cli.runs import write_predictions
from hiddenkey.tasks.nlg import NLGExample, load_e2e, load_webnlg, to_training_pairs

from .nlg_helpers import EOS, FIXTURES, build_tokenizer, tiny_causal_lm, tiny_causal_lm_folder


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run faster on one thread (and do not fight other test processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def e2e():
    return load_e2e(FIXTURES / "e2e")


@pytest.fixture(scope="module")
def webnlg():
    return load_webnlg(FIXTURES / "webnlg")


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------
# encoding


def test_tokenizer_roundtrips_and_has_eos_pad(tokenizer):
    text = "The Vaults pub near Café Adriatic has a 5 star rating. Prices start at £30."
    assert tokenizer.decode(_ids(tokenizer, text)) == text
    assert tokenizer.eos_token == EOS and tokenizer.pad_token == "<pad>"
    assert tokenizer.eos_token_id != tokenizer.pad_token_id


def test_encode_training_pairs_masks_prompt_and_supervises_target_and_eos(tokenizer):
    source, target = "name : Blue Spice | eatType : coffee shop", "Blue Spice is a coffee shop."
    (feat,) = encode_training_pairs(tokenizer, [(source, target)], max_length=128)
    src_ids, tgt_ids, eos = _ids(tokenizer, source), _ids(tokenizer, " " + target), tokenizer.eos_token_id
    prompt = src_ids + [eos]
    assert encode_prompt(tokenizer, source) == prompt
    assert feat["input_ids"] == prompt + tgt_ids + [eos]
    assert feat["labels"] == [IGNORE_INDEX] * len(prompt) + tgt_ids + [eos]
    assert feat["attention_mask"] == [1] * len(feat["input_ids"])
    # the prompt as text tokenises to the same ids (the eos string is one special token)
    assert _ids(tokenizer, format_prompt(source, tokenizer.eos_token)) == prompt
    assert tokenizer.decode(feat["input_ids"][len(prompt) : -1]).strip() == target


def test_encode_training_pairs_truncation(tokenizer):
    source, target = "name : Blue Spice | eatType : coffee shop", "Blue Spice is a coffee shop in the city centre."
    eos = tokenizer.eos_token_id
    src_ids, tgt_ids = _ids(tokenizer, source), _ids(tokenizer, " " + target)
    prompt_len = len(src_ids) + 1
    # target is cut first (its tail and the final eos go), the prompt is intact
    (feat,) = encode_training_pairs(tokenizer, [(source, target)], max_length=prompt_len + 3)
    assert feat["input_ids"] == src_ids + [eos] + tgt_ids[:3]
    assert feat["labels"] == [IGNORE_INDEX] * prompt_len + tgt_ids[:3]
    # prompt alone too long: source cut from the left, separator kept, one target token left
    (feat,) = encode_training_pairs(tokenizer, [(source, target)], max_length=6)
    assert feat["input_ids"] == src_ids[-4:] + [eos] + tgt_ids[:1]
    assert feat["labels"] == [IGNORE_INDEX] * 5 + tgt_ids[:1]
    # exactly fitting: nothing cut
    full = prompt_len + len(tgt_ids) + 1
    (feat,) = encode_training_pairs(tokenizer, [(source, target)], max_length=full)
    assert len(feat["input_ids"]) == full and feat["labels"][-1] == eos


@pytest.mark.parametrize("pairs", [[], [("", "text")], [("source", "")], [("  ", "text")], [("source", "   ")]])
def test_encode_training_pairs_rejects_empty_input(tokenizer, pairs):
    with pytest.raises(ValueError):
        encode_training_pairs(tokenizer, pairs, max_length=64)


def test_encode_rejects_tokenizer_without_eos(tokenizer):
    tok = build_tokenizer()
    tok.eos_token = None
    with pytest.raises(ValueError, match="eos"):
        encode_training_pairs(tok, [("a", "b")], max_length=64)
    with pytest.raises(ValueError, match="max_length"):
        encode_training_pairs(tokenizer, [("a", "b")], max_length=2)


def test_collator_right_pads(tokenizer):
    feats = encode_training_pairs(tokenizer, [("name : A", "A is good."), ("name : Blue Spice | area : city centre", "Hi.")], 64)
    pad = tokenizer.pad_token_id
    batch = CausalLMCollator(pad)(feats)
    width = max(len(f["input_ids"]) for f in feats)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    for row, f in enumerate(feats):
        n = len(f["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == f["input_ids"]
        assert batch["labels"][row, :n].tolist() == f["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["input_ids"][row, n:].eq(pad).all() and batch["labels"][row, n:].eq(IGNORE_INDEX).all()
    assert CausalLMCollator(pad, pad_to_multiple_of=8)(feats)["input_ids"].shape[1] % 8 == 0


# --------------------------------------------------------------------------------------------
# decoding settings


def test_paper_generation_settings():
    e2e_gpt2 = paper_generation_settings("e2e", "gpt2")
    assert (e2e_gpt2.num_beams, e2e_gpt2.no_repeat_ngram_size, e2e_gpt2.length_penalty) == (10, 4, 0.9)
    assert e2e_gpt2.repetition_penalty == 1.0 and e2e_gpt2.max_new_tokens == 64 and not e2e_gpt2.do_sample
    web_gpt2 = paper_generation_settings("webnlg", "gpt2")
    assert (web_gpt2.num_beams, web_gpt2.no_repeat_ngram_size, web_gpt2.length_penalty) == (10, 4, 0.8)
    for task in ("e2e", "webnlg"):
        for style in ("llama", "mistral", "qwen2", "gemma"):
            s = paper_generation_settings(task, style)
            assert (s.num_beams, s.no_repeat_ngram_size, s.length_penalty, s.repetition_penalty) == (1, 0, 1.0, 1.0)
            assert s.max_new_tokens == 64
    assert paper_generation_settings("e2e", "gpt2-medium").num_beams == 10
    with pytest.raises(ValueError, match="task"):
        paper_generation_settings("sst2", "gpt2")


def test_resolve_fills_only_unset_fields():
    s = resolve(GenerationSettings(num_beams=3, max_new_tokens=20), "webnlg", "gpt2")
    assert (s.num_beams, s.max_new_tokens, s.length_penalty, s.no_repeat_ngram_size) == (3, 20, 0.8, 4)
    assert resolve(None, "e2e", "llama") == paper_generation_settings("e2e", "llama")
    with pytest.raises(ValueError, match="num_beams"):
        resolve(GenerationSettings(num_beams=0), "e2e", "gpt2")


def test_generation_settings_parse_next_to_training_arguments():
    parser = transformers.HfArgumentParser((GenerationSettings, transformers.TrainingArguments))
    gen, train = parser.parse_args_into_dataclasses(
        ["--output_dir", "x", "--num_beams", "4", "--length_penalty", "0.7", "--generation_batch_size", "2"]
    )
    assert (gen.num_beams, gen.length_penalty, gen.generation_batch_size, gen.max_new_tokens) == (4, 0.7, 2, None)
    assert all(f.metadata.get("help") for f in dataclasses.fields(GenerationSettings))


# --------------------------------------------------------------------------------------------
# generation


def _memorise(tokenizer, pairs, steps=60, seed=0):
    model = tiny_causal_lm(tokenizer, "gpt2", seed=seed)
    batch = CausalLMCollator(tokenizer.pad_token_id)(encode_training_pairs(tokenizer, pairs, 128))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, float(loss.detach())


@pytest.fixture(scope="module")
def memorised(tokenizer, e2e):
    examples = [NLGExample(ex.source, ex.references[:1], ex.meta) for ex in (e2e["train"][0], e2e["validation"][0], e2e["test"][0])]
    model, loss = _memorise(tokenizer, to_training_pairs(examples))
    return model, examples, loss


def test_memorised_pairs_are_generated_exactly_with_beam_search(tokenizer, memorised):
    model, examples, loss = memorised
    assert loss < 0.05
    settings = resolve(GenerationSettings(max_new_tokens=40), "e2e", "gpt2")
    assert settings.num_beams == 10
    hyps = generate_texts(model, tokenizer, [ex.source for ex in examples], settings, batch_size=3, show_progress=False)
    assert hyps == [ex.references[0] for ex in examples]
    assert evaluate_generation("e2e", examples, hyps)["bleu"] == pytest.approx(100.0)
    assert model.training  # previous mode restored


def test_left_padding_same_output_alone_and_in_batch(tokenizer, memorised):
    model, examples, _ = memorised
    short = min(examples, key=lambda ex: len(encode_prompt(tokenizer, ex.source)))
    longer = [ex.source for ex in examples if ex is not short]
    for settings in (resolve(GenerationSettings(max_new_tokens=40), "e2e", "gpt2"), resolve(None, "e2e", "llama")):
        alone = generate_texts(model, tokenizer, [short.source], settings, show_progress=False)
        batched = generate_texts(model, tokenizer, [short.source, *longer], settings, batch_size=3, show_progress=False)
        assert alone[0] == batched[0] == short.references[0]
    assert tokenizer.padding_side == "right"  # the tokenizer is left untouched


def test_generate_with_peft_model(tokenizer, memorised):
    from peft import LoraConfig, get_peft_model

    model, examples, _ = memorised
    peft_model = get_peft_model(
        tiny_causal_lm(tokenizer, "gpt2"), LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    )
    peft_model.base_model.model.load_state_dict(model.state_dict(), strict=False)
    settings = resolve(GenerationSettings(max_new_tokens=40), "e2e", "gpt2")
    hyps = generate_texts(peft_model, tokenizer, [ex.source for ex in examples[:2]], settings, show_progress=False)
    assert hyps == [ex.references[0] for ex in examples[:2]]  # LoRA B = 0: same function as the base model


def test_tiny_llama_greedy_from_saved_folder(tmp_path, e2e):
    folder = tiny_causal_lm_folder(tmp_path / "llama", family="llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == "llama" and tok.eos_token == EOS
    settings = resolve(GenerationSettings(max_new_tokens=8), "e2e", model.config.model_type)
    assert settings.num_beams == 1
    sources = [ex.source for ex in e2e["test"] + e2e["train"]]
    hyps = generate_texts(model, tok, sources, settings, batch_size=2, show_progress=False)
    assert len(hyps) == len(sources) and all(isinstance(h, str) for h in hyps)
    # each batched, left-padded output equals plain greedy decoding of that prompt alone
    for source, hyp in zip(sources, hyps):
        prompt = torch.tensor([encode_prompt(tok, source)])
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=8,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, prompt.shape[1]:].tolist()
        if tok.eos_token_id in out:
            out = out[: out.index(tok.eos_token_id)]
        assert len(out) <= 8
        assert hyp == tok.decode(out, skip_special_tokens=True).strip()


def test_generate_requires_resolved_settings(tokenizer, memorised):
    with pytest.raises(ValueError, match="resolve"):
        generate_texts(memorised[0], tokenizer, ["x"], GenerationSettings(), show_progress=False)
    assert generate_texts(memorised[0], tokenizer, [], resolve(None, "e2e", "gpt2")) == []


# --------------------------------------------------------------------------------------------
# scoring and predictions


def test_evaluate_generation_e2e_keys(e2e):
    examples = e2e["test"] + e2e["validation"]
    scores = evaluate_generation("e2e", examples, [ex.references[0] for ex in examples])
    assert set(scores) == {"bleu", "nist", "meteor", "rouge_l", "cider"}
    assert scores["bleu"] == pytest.approx(100.0)


def test_evaluate_generation_webnlg_subsets(webnlg):
    examples = webnlg["test"]
    assert {ex.meta["seen"] for ex in examples} == {True, False}
    scores = evaluate_generation("webnlg", examples, [ex.references[0] for ex in examples])
    assert set(scores) == {f"{s}_{m}" for s in ("all", "seen", "unseen") for m in ("bleu", "meteor", "ter")}
    for subset in ("all", "seen", "unseen"):
        assert scores[f"{subset}_bleu"] == pytest.approx(100.0)
        assert scores[f"{subset}_ter"] == pytest.approx(0.0)
    seen_only = [ex for ex in examples if ex.meta["seen"]]
    scores = evaluate_generation("webnlg", seen_only, [ex.references[0] for ex in seen_only])
    assert set(scores) == {f"{s}_{m}" for s in ("all", "seen") for m in ("bleu", "meteor", "ter")}
    bad = evaluate_generation("webnlg", examples, ["nothing alike here"] * len(examples))
    assert bad["all_bleu"] < 10
    with pytest.raises(ValueError, match="hypotheses"):
        evaluate_generation("webnlg", examples, ["x"])


def test_write_predictions_jsonl(tmp_path, webnlg):
    examples = webnlg["test"]
    hyps = [f"hyp {i}" for i in range(len(examples))]
    path = write_predictions(tmp_path / "out", examples, hyps)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["hypothesis"] for r in rows] == hyps
    assert [r["source"] for r in rows] == [ex.source for ex in examples]
    assert [r["references"] for r in rows] == [ex.references for ex in examples]
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.jsonl"]  # no temp file left


def test_no_repeat_ngram_counts_generated_tokens_only():
    from hiddenkey.cli.decoding import GeneratedNoRepeatNGramLogitsProcessor

    proc = GeneratedNoRepeatNGramLogitsProcessor(2, prompt_length=3)
    # prompt [5, 6, 5]; generated [6, 7, 6]: the bigram (6, 7) was generated -> 7 banned after 6;
    # the prompt bigram (5, 6) must not ban 6 after a generated 5
    ids = torch.tensor([[5, 6, 5, 6, 7, 6], [5, 6, 5, 1, 2, 5]])
    scores = proc(ids, torch.zeros(2, 10))
    assert torch.isinf(scores[0]).nonzero().flatten().tolist() == [7]
    assert not torch.isinf(scores[1]).any()
    assert not torch.isinf(proc(ids[:, :4], torch.zeros(2, 10))).any()  # fewer than n generated tokens
