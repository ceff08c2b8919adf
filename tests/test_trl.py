"""hiddenkey.SFTTrainer (TRL) and the TrainerMixin: the KL trains, two forwards per step, completion-only
masks, packed padding-free batches, refusals, and the warning when a trainer would ignore the KL."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from datasets import Dataset

import hiddenkey
from hiddenkey.attach import base_model

from .conftest import VOCAB, build_model, lora

trl = pytest.importorskip("trl", reason="the [trl] extra is installed by scripts/setup.sh")

PAD, EOS = 0, 1


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over the tiny models' vocabulary: token ``wN`` has id ``N``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(2, VOCAB)} | {"<pad>": PAD, "</s>": EOS}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def prompt_completion(n=24, seed=0) -> Dataset:
    """Prompts of 3-6 words, completions that repeat the prompt's first word: learnable, completion-only."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        words = (2 + torch.randint(0, VOCAB - 2, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g)).tolist()
        rows.append({"prompt": " ".join(f"w{w}" for w in words), "completion": " " + " ".join([f"w{words[0]}"] * 3)})
    return Dataset.from_list(rows)


def llama(seed=0):
    model = lora(build_model("llama", seed=seed), "llama", init_lora_weights=False)
    return model


def sft_args(tmp_path, **kw) -> "trl.SFTConfig":
    defaults = dict(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True, max_length=24,
        dataset_num_proc=None,
    )
    return trl.SFTConfig(**{**defaults, **kw})


def sft_trainer(tmp_path, model, dataset=None, cls=None, **kw):
    cls = cls or hiddenkey.SFTTrainer
    return cls(
        model=model, args=sft_args(tmp_path, **kw), train_dataset=dataset or prompt_completion(),
        processing_class=tiny_tokenizer(),
    )


def one_batch(trainer) -> dict:
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}


class CountForwards:
    def __init__(self, model):
        self.count = 0
        base_model(model).register_forward_pre_hook(self)

    def __call__(self, module, args):
        if module.training:
            self.count += 1


def test_sft_kl_gradient_reaches_lora_and_equals_hiddenkey_loss(tmp_path):
    model = llama()
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.2, kl_weight=5.0))
    trainer = sft_trainer(tmp_path, model)
    batch = one_batch(trainer)
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # completion-only labels
    model.train()

    def grads(loss_fn):
        model.zero_grad()
        torch.manual_seed(7)
        loss = loss_fn()
        loss.backward()
        return loss.detach(), lora_grads(model)

    trainer_loss, trainer_grads = grads(lambda: trainer.compute_loss(model, dict(batch)))
    library_loss, library_grads = grads(lambda: hiddenkey.hiddenkey_loss(model, dict(batch))[0])
    no_kl = hiddenkey.DropoutConfig.preset("hiddenkey-", rate=0.2)
    _, task_grads = grads(lambda: hiddenkey.hiddenkey_loss(model, dict(batch), no_kl)[0])

    torch.testing.assert_close(trainer_loss, library_loss)
    assert trainer_grads.keys() == library_grads.keys() and len(trainer_grads) == 16  # A and B of q and v in 4 layers
    for name in trainer_grads:
        torch.testing.assert_close(trainer_grads[name], library_grads[name], rtol=1e-5, atol=1e-7)
    kl_grad = {n: trainer_grads[n] - task_grads[n] for n in trainer_grads}
    assert all(g.abs().sum() > 0 for g in kl_grad.values()), "the KL sends no gradient into the LoRA weights"


@pytest.mark.parametrize("preset,per_step", [("hiddenkey", 2), ("hiddenkey-", 1)])
def test_sft_forwards_per_training_step(tmp_path, preset, per_step):
    model = llama()
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset(preset, rate=0.1))
    trainer = sft_trainer(tmp_path, model, max_steps=3)
    counter = CountForwards(model)
    trainer.train()
    assert counter.count == 3 * per_step
    if preset == "hiddenkey":
        logged = [e for e in trainer.state.log_history if "loss" in e]
        assert len(logged) == 3 and all(e["consistency_loss"] > 0 and "mean_token_accuracy" in e for e in logged)


def test_sft_packed_padding_free_batch_trains(tmp_path):
    model = llama()
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.1))
    trainer = sft_trainer(tmp_path, model, packing=True, max_length=32, max_steps=4, per_device_train_batch_size=2)
    batch = one_batch(trainer)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    assert (batch["position_ids"][0] == 0).sum() > 1  # several sequences in one row
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert logged and all(torch.isfinite(torch.tensor(e["loss"])) and e["consistency_loss"] > 0 for e in logged)
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)


def test_sft_packed_kl_ignores_sequence_boundaries(tmp_path):
    """In a padding-free row the last token of a sequence predicts nothing: labels there are -100."""
    model = llama()
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.1))
    trainer = sft_trainer(tmp_path, model, packing=True, max_length=32, per_device_train_batch_size=2)
    batch = one_batch(trainer)
    starts = (batch["position_ids"][0] == 0).nonzero().flatten()
    assert (batch["labels"][0, starts] == -100).all()
    from hiddenkey.losses import lm_token_mask

    mask = lm_token_mask(batch["labels"], None, batch["labels"].shape[1])
    assert not mask[0, starts[1:] - 1].any()


def test_sft_refuses_liger_with_a_consistency_loss(tmp_path):
    model = llama()
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey"))
    args = sft_args(tmp_path)
    args.use_liger_kernel = True
    with pytest.raises(hiddenkey.ConfigError, match="use_liger_kernel"):
        hiddenkey.SFTTrainer(model=model, args=args, train_dataset=prompt_completion(), processing_class=tiny_tokenizer())


def test_mixin_on_trl_without_the_logits_forward_is_a_clear_error(tmp_path):
    """TRL's compute_loss recomputes its logits under no_grad: a KL on them would train nothing."""

    class Naive(hiddenkey.TrainerMixin, trl.SFTTrainer):
        pass

    model = llama()
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey"))
    trainer = sft_trainer(tmp_path, model, cls=Naive)
    with pytest.raises(RuntimeError, match="carry no gradient"):
        trainer.train()


@pytest.mark.parametrize("trainer_kind", ["transformers", "trl"])
def test_plain_trainers_warn_once_that_the_kl_is_ignored(tmp_path, trainer_kind):
    model = llama()
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.1))
    if trainer_kind == "trl":
        trainer = sft_trainer(tmp_path, model, cls=trl.SFTTrainer, max_steps=2)
    else:
        data = Dataset.from_list([{"input_ids": [2, 3, 4, 5], "labels": [2, 3, 4, 5]}] * 8)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True,
            save_strategy="no", disable_tqdm=True,
        )
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    ignored = [w for w in caught if issubclass(w.category, hiddenkey.ConsistencyIgnoredWarning)]
    assert len(ignored) == 1 and "hiddenkey.TrainerMixin" in str(ignored[0].message)


def test_hiddenkey_trainers_do_not_warn(tmp_path):
    model = llama()
    hiddenkey.attach(model, hiddenkey.DropoutConfig.preset("hiddenkey", rate=0.1))
    trainer = sft_trainer(tmp_path, model, max_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if issubclass(w.category, hiddenkey.ConsistencyIgnoredWarning)]
