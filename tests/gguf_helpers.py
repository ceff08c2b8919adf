"""Write a tiny Llama as a real GGUF file (llama.cpp's layout, quantised with the gguf package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


#: Byte tokens, two merges, and the end-of-text token: a complete byte-level BPE vocabulary.
MERGES = ["Ġ t", "h e"]
TOKENS = [_bytes_to_unicode()[b] for b in range(256)] + ["Ġt", "he", "<|endoftext|>"]
EOS = len(TOKENS) - 1


def tiny_llama(seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(TOKENS), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout for q/k rows (convert_hf_to_gguf.py ``LlamaModel.permute``)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def write_llama_gguf(model: transformers.LlamaForCausalLM, path: Path, quantization: str = "Q8_0") -> Path:
    """Write ``model`` as ``path`` with its 2-D weights quantised (``Q8_0``, ``Q4_0``, ``Q4_1``, ...)."""
    import gguf

    cfg = model.config
    qtype = gguf.GGMLQuantizationType[quantization]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(TOKENS)
    writer.add_token_types([gguf.TokenType.NORMAL] * (len(TOKENS) - 1) + [gguf.TokenType.CONTROL])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(EOS)
    writer.add_eos_token_id(EOS)
    writer.add_pad_token_id(EOS)

    def add(name: str, tensor: torch.Tensor, heads: int | None = None) -> None:
        data = tensor.detach().float().numpy()
        if heads is not None:
            data = _permute(data, heads)
        if data.ndim == 2:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)

    state = model.state_dict()
    add("token_embd.weight", state["model.embed_tokens.weight"])
    add("output_norm.weight", state["model.norm.weight"])
    add("output.weight", state["lm_head.weight"])
    names = {
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    for i in range(cfg.num_hidden_layers):
        prefix = f"model.layers.{i}."
        add(f"blk.{i}.attn_q.weight", state[prefix + "self_attn.q_proj.weight"], cfg.num_attention_heads)
        add(f"blk.{i}.attn_k.weight", state[prefix + "self_attn.k_proj.weight"], cfg.num_key_value_heads)
        for gguf_name, hf_name in names.items():
            add(f"blk.{i}.{gguf_name}.weight", state[prefix + hf_name + ".weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
