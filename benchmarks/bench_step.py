#!/usr/bin/env python
"""Train-step time, peak step memory and eval-forward time of hiddenkey's presets against plain LoRA.

One process run measures every variant on the same model shape, batch, sequence length and seed:

* ``lora``: plain peft LoRA, the model's own dropouts set to 0 in its config, the model's own ``sdpa``
  attention, hiddenkey NOT attached (the paper's baseline);
* one row per hiddenkey preset, each attached to a fresh LoRA model built from the same seed.

Timing is interleaved: every round runs one step of every variant (the order alternates round by
round), so drift in machine speed hits all variants alike; the table reports median step times and
``median(variant) / median(lora)``. Peak memory is measured per variant in a fresh subprocess (see
``benchmarks/README.md`` for the method). Results are printed as a markdown table; ``--json`` writes
them as JSON too.

    python benchmarks/bench_step.py                          # BERT-base shape, batch 16, length 128, CPU
    python benchmarks/bench_step.py --padding half
    python benchmarks/bench_step.py --model-size small --steps 3
    python benchmarks/bench_step.py --family llama --variants lora,hiddenkey-,hiddenkey
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

try:
    import hiddenkey  # noqa: E402
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import hiddenkey  # noqa: E402

RATE = 0.1
MEMORY_CHILD_FLAG = "--_memory-child"

# name -> (label in the table, DropoutConfig factory or None for plain LoRA)
VARIANTS: dict[str, tuple[str, Callable[[float], Any] | None]] = {
    "lora": ("LoRA (sdpa, no hiddenkey)", None),
    "baseline": ("baseline (attached, no drops)", lambda r: hiddenkey.DropoutConfig.preset("baseline", rate=r)),
    "dropkey": ("DropKey column", lambda r: hiddenkey.DropoutConfig.preset("dropkey", rate=r, pattern="column")),
    "dropattention": (
        "DropAttention element",
        lambda r: hiddenkey.DropoutConfig.preset("dropattention", rate=r, pattern="element"),
    ),
    "dropattention-column": (
        "DropAttention column",
        lambda r: hiddenkey.DropoutConfig.preset("dropattention", rate=r, pattern="column"),
    ),
    "hiddencut": ("HiddenCut element", lambda r: hiddenkey.DropoutConfig.preset("hiddencut", rate=r, pattern="element")),
    "hiddenkey-": ("HiddenKey⁻", lambda r: hiddenkey.DropoutConfig.preset("hiddenkey-", rate=r)),
    "hiddenkey-unchunked": (
        "HiddenKey (KL, one branch, full passes, unchunked KL)",
        lambda r: hiddenkey.DropoutConfig.preset("hiddenkey", rate=r, share_prefix=False, consistency_chunk_size=2**62),
    ),
    "hiddenkey-full": (
        "HiddenKey (KL, one branch, full passes)",
        lambda r: hiddenkey.DropoutConfig.preset("hiddenkey", rate=r, share_prefix=False),
    ),
    "hiddenkey": ("HiddenKey (KL, one branch)", lambda r: hiddenkey.DropoutConfig.preset("hiddenkey", rate=r)),
    "hiddenkey-both": (
        "HiddenKey (KL, both: 2B batch)",
        lambda r: hiddenkey.DropoutConfig.preset("hiddenkey", rate=r, backprop="both"),
    ),
}

SIZES = {
    # family -> size -> config overrides
    "bert": {
        "base": {},  # BertConfig() defaults: 12 layers, hidden 768, 12 heads, intermediate 3072, vocab 30522
        "small": {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
        "tiny": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 256},
    },
    "llama": {
        "base": {
            "num_hidden_layers": 8,
            "hidden_size": 512,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "intermediate_size": 1408,
            "vocab_size": 32000,
        },
        "small": {
            "num_hidden_layers": 4,
            "hidden_size": 256,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 704,
            "vocab_size": 8000,
        },
        "tiny": {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 176,
            "vocab_size": 1000,
        },
    },
}


# ------------------------------------------------------------------------------------------------ setup
def quiet() -> None:
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in ("transformers", "peft", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Train-step time / peak memory / eval time of hiddenkey presets vs plain LoRA (ratios).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--family", choices=("bert", "llama"), default="bert", help="encoder (BERT, SEQ_CLS) or decoder (Llama, CAUSAL_LM)")
    p.add_argument("--model-size", choices=("base", "small", "tiny"), default="base", help="base: BertConfig() defaults / Llama 8x512")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument(
        "--padding",
        choices=("none", "half"),
        default="none",
        help="half: half of the samples have their last 1/4..1/2 positions padded (materialised padding mask)",
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    p.add_argument("--rate", type=float, default=RATE, help="drop rate of every preset")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per variant")
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant (interleaved rounds)")
    p.add_argument("--eval-steps", type=int, default=None, help="timed eval forwards per variant (None: as many as --steps)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (None: torch's default; use 1 on a small shared machine)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (time.process_time), which other jobs on a "
        "shared machine inflate much less than wall time; CPU only, meaningful with --threads 1",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    p.add_argument(MEMORY_CHILD_FLAG, dest="memory_child", metavar="VARIANT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if "lora" not in names and args.memory_child is None:
        names.insert(0, "lora")  # every ratio is against plain LoRA
    args.variant_names = list(dict.fromkeys(names))
    if args.eval_steps is None:
        args.eval_steps = args.steps
    if args.steps < 1 or args.warmup < 0 or args.eval_steps < 0:
        p.error("--steps must be >= 1, --warmup and --eval-steps >= 0")
    if args.clock == "cpu" and torch.device(args.device).type != "cpu":
        p.error("--clock cpu measures CPU time; use it with --device cpu")
    return args


def log(args: argparse.Namespace, msg: str) -> None:
    if args.verbose:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def model_description(args: argparse.Namespace) -> str:
    cfg = model_config(args, plain=False)
    if args.family == "bert":
        return (
            f"BertForSequenceClassification {args.model_size} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
            f"{cfg.num_attention_heads} heads, FFN {cfg.intermediate_size})"
        )
    return (
        f"LlamaForCausalLM {args.model_size} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads}/{cfg.num_key_value_heads} heads, FFN {cfg.intermediate_size}, vocab {cfg.vocab_size})"
    )


def model_config(args: argparse.Namespace, plain: bool):
    """The model config. ``plain``: the paper's LoRA baseline, the model's own dropouts at 0."""
    overrides = dict(SIZES[args.family][args.model_size])
    if args.family == "bert":
        from transformers import BertConfig

        if plain:
            overrides.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return BertConfig(num_labels=2, attn_implementation="sdpa", **overrides)
    from transformers import LlamaConfig

    if plain:
        overrides.update(attention_dropout=0.0)
    return LlamaConfig(attn_implementation="sdpa", pad_token_id=0, **overrides)


def build_model(args: argparse.Namespace, name: str, device: torch.device, dtype: torch.dtype):
    """A fresh LoRA model (same seed for every variant), attached for hiddenkey variants, and its optimizer."""
    from peft import LoraConfig, get_peft_model

    factory = VARIANTS[name][1]
    torch.manual_seed(args.seed)
    config = model_config(args, plain=factory is None)
    if args.family == "bert":
        from transformers import BertForSequenceClassification

        model = BertForSequenceClassification(config)
        lora = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"])
    else:
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(config)
        lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = model.to(device=device, dtype=dtype)
    model = get_peft_model(model, lora)
    if factory is not None:
        hiddenkey.attach(model, factory(args.rate))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    return model, optimizer


def make_batch(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    """Random token ids; with ``--padding half`` every other sample is right-padded by L/4..L/2 positions."""
    g = torch.Generator().manual_seed(args.seed + 1)
    b, length = args.batch_size, args.seq_len
    vocab = model_config(args, plain=True).vocab_size
    input_ids = torch.randint(5, vocab, (b, length), generator=g)
    attention_mask = torch.ones(b, length, dtype=torch.long)
    if args.padding == "half":
        lo, hi = max(1, length // 4), max(1, length // 2)
        for i in range(1, b, 2):
            pad = int(torch.randint(lo, hi + 1, (1,), generator=g))
            attention_mask[i, length - pad :] = 0
            input_ids[i, length - pad :] = 0
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if args.family == "bert":
        batch["labels"] = torch.randint(0, 2, (b,), generator=g)
    else:
        batch["labels"] = input_ids.masked_fill(attention_mask == 0, -100)
    return {k: v.to(device) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------ steps
@dataclass
class Variant:
    name: str
    model: Any
    optimizer: torch.optim.Optimizer
    step_s: list[float] = field(default_factory=list)
    eval_s: list[float] = field(default_factory=list)
    memory: dict[str, Any] | None = None

    @property
    def attached(self) -> bool:
        return VARIANTS[self.name][1] is not None


def train_step(v: Variant, batch: dict[str, torch.Tensor]) -> None:
    v.optimizer.zero_grad(set_to_none=True)
    if v.attached:
        loss, _, _ = hiddenkey.hiddenkey_loss(v.model, batch)
    else:
        loss = v.model(**batch).loss
    loss.backward()
    v.optimizer.step()


def eval_forward(v: Variant, batch: dict[str, torch.Tensor]) -> None:
    with torch.inference_mode():
        v.model(**batch)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn: Callable[[], None], device: torch.device, clock: str = "wall") -> float:
    now = CLOCKS[clock]
    sync(device)
    start = now()
    fn()
    sync(device)
    return now() - start


def interleaved(variants: list[Variant], rounds: int, run: Callable[[Variant], float]) -> None:
    for r in range(rounds):
        for v in variants if r % 2 == 0 else reversed(variants):
            run(v)


# ------------------------------------------------------------------------------------------------ memory
def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: the peak extra memory of one training step over the resting model (bytes)."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    model, optimizer = build_model(args, args.memory_child, device, dtype)
    v = Variant(args.memory_child, model, optimizer)
    batch = make_batch(args, device)
    # One warm-up step: optimizer state, lazily initialised kernels/workspaces, first-call caches.
    train_step(v, batch)
    v.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    samples = []
    method = None
    for _ in range(2):
        gc.collect()
        if device.type == "cuda":
            method = "torch.cuda.max_memory_allocated - memory_allocated"
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            train_step(v, batch)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
        elif _reset_peak_rss() and _proc_status_kib("VmRSS") is not None:
            method = "VmHWM after step - VmRSS before (clear_refs reset, fixed malloc mmap threshold)"
            before = _proc_status_kib("VmRSS") * 1024
            train_step(v, batch)
            peak = _proc_status_kib("VmHWM") * 1024
        else:  # no /proc: ru_maxrss high-water mark; valid only if the step surpasses the build peak
            import resource

            method = "ru_maxrss after step - current RSS before (fallback)"
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
            train_step(v, batch)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        v.optimizer.zero_grad(set_to_none=True)
        samples.append(max(0, peak - before))
    return {"variant": args.memory_child, "peak_extra_bytes": min(samples), "samples": samples, "method": method}


def measure_memory(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Run :func:`memory_child` for one variant in a fresh interpreter."""
    cmd = [sys.executable, str(Path(__file__).resolve()), MEMORY_CHILD_FLAG, name]
    for flag, value in (
        ("--family", args.family),
        ("--model-size", args.model_size),
        ("--batch-size", args.batch_size),
        ("--seq-len", args.seq_len),
        ("--padding", args.padding),
        ("--rate", args.rate),
        ("--device", args.device),
        ("--dtype", args.dtype),
        ("--seed", args.seed),
    ):
        cmd += [flag, str(value)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ)
    # A fixed mmap threshold turns off glibc's dynamic threshold, so every large tensor buffer is mmap'ed
    # and unmapped on free: RSS follows the live tensors instead of freed-but-kept heap.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(128 * 1024))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {name!r} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ main
def run(args: argparse.Namespace) -> dict[str, Any]:
    import peft
    import transformers

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    load_start = _load_average()
    batch = make_batch(args, device)
    eval_batch = {k: v for k, v in batch.items() if k != "labels"}

    variants = []
    for name in args.variant_names:
        log(args, f"building {name}")
        model, optimizer = build_model(args, name, device, dtype)
        variants.append(Variant(name, model, optimizer))

    def train_once(v: Variant) -> float:
        return timed(lambda: train_step(v, batch), device, args.clock)

    log(args, f"warm-up: {args.warmup} round(s)")
    interleaved(variants, args.warmup, train_once)
    log(args, f"timing train steps: {args.steps} round(s)")
    interleaved(variants, args.steps, lambda v: v.step_s.append(train_once(v)))

    if args.eval_steps:
        for v in variants:
            v.optimizer.zero_grad(set_to_none=True)
            v.model.eval()

        def eval_once(v: Variant) -> float:
            return timed(lambda: eval_forward(v, eval_batch), device, args.clock)

        log(args, f"timing eval forwards: 1 warm-up + {args.eval_steps} round(s)")
        interleaved(variants, 1, eval_once)
        interleaved(variants, args.eval_steps, lambda v: v.eval_s.append(eval_once(v)))
        for v in variants:
            v.model.train()

    if not args.no_memory:
        # Free the timing models first so the subprocesses do not compete for memory.
        names = [v.name for v in variants]
        for v in variants:
            v.model = v.optimizer = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for v, name in zip(variants, names):
            log(args, f"memory: {name} (fresh subprocess)")
            v.memory = measure_memory(args, name)

    lora = next(v for v in variants if v.name == "lora")
    lora_step = statistics.median(lora.step_s)
    lora_eval = statistics.median(lora.eval_s) if lora.eval_s else None
    lora_mem = lora.memory["peak_extra_bytes"] if lora.memory else None
    rows = []
    for v in variants:
        step = statistics.median(v.step_s)
        ev = statistics.median(v.eval_s) if v.eval_s else None
        mem = v.memory["peak_extra_bytes"] if v.memory else None
        rows.append(
            {
                "variant": v.name,
                "label": VARIANTS[v.name][0],
                "config": None if not v.attached else VARIANTS[v.name][1](args.rate).describe(),
                "step_ms_median": step * 1e3,
                "step_ms_all": [s * 1e3 for s in v.step_s],
                "step_ratio": step / lora_step,
                "peak_extra_mib": None if mem is None else mem / 2**20,
                "peak_memory_ratio": None if mem is None or not lora_mem else mem / lora_mem,
                "memory_samples_mib": None if v.memory is None else [s / 2**20 for s in v.memory["samples"]],
                "eval_ms_median": None if ev is None else ev * 1e3,
                "eval_ms_all": [s * 1e3 for s in v.eval_s],
                "eval_ratio": None if ev is None or not lora_eval else ev / lora_eval,
            }
        )
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "family": args.family,
        "model": model_description(args),
        "model_size": args.model_size,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "padding": args.padding,
        "rate": args.rate,
        "warmup": args.warmup,
        "steps": args.steps,
        "eval_steps": args.eval_steps,
        "seed": args.seed,
        "memory_method": None if not lora.memory else lora.memory["method"],
        "clock": args.clock,
        "load_average_1min": [load_start, _load_average()],
        "rows": rows,
    }


def _load_average() -> float | None:
    """The machine's 1-minute load average (other jobs share the cores), or None where unknown."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"cpu ({cpu}, {os.cpu_count()} logical cores)"


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def markdown(result: dict[str, Any]) -> str:
    r = result
    head = (
        f"torch {r['torch']}, transformers {r['transformers']}, peft {r['peft']}; device {r['device']}, "
        f"threads {r['threads']}; {r['model']}, {r['dtype']}; batch {r['batch_size']}, seq len {r['seq_len']}, "
        f"padding {r['padding']}; rate {r['rate']:g}; {r['steps']} timed steps (+{r['warmup']} warm-up), "
        f"{r['eval_steps']} eval forwards, interleaved; {r['clock']} clock"
    )
    load = r.get("load_average_1min") or [None, None]
    if None not in load:
        head += f"; load average {load[0]:.1f} at start, {load[1]:.1f} at end on {os.cpu_count()} logical cores"
    lines = [
        head,
        "",
        "| variant | step ms (median) | step ratio | peak-memory ratio | eval ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        mem = _fmt(row["peak_memory_ratio"])
        if row["peak_extra_mib"] is not None:
            mem += f" ({row['peak_extra_mib']:.0f} MiB)"
        ev = _fmt(row["eval_ratio"])
        if row["eval_ms_median"] is not None:
            ev += f" ({row['eval_ms_median']:.0f} ms)"
        lines.append(
            f"| {row['label']} | {row['step_ms_median']:.0f} | {row['step_ratio']:.2f} | {mem} | {ev} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args)))
        return 0
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("bench_step: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    start = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - start
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
