"""LLaMA-family GGUF (llama.cpp) -> HF `LlamaForCausalLM` tensors, config and tokenizer.json.

The output is in HF's names and layouts so one HF-Llama -> ours table serves
both a safetensors directory and a GGUF file. Three things differ from HF:

- Quantised tensors (Q4_1, Q8_0, ...) are dequantised to float32 with the
  `gguf` package; numpy dims are GGUF's reversed, which is torch's [out, in].
- llama.cpp's converter permutes the q/k projection rows of every head from
  HF's rotate-half RoPE layout (pairs (i, i + d/2)) to the interleaved layout
  of Meta's original checkpoints (pairs (2i, 2i + 1)); `_unpermute` undoes it.
- The vocabulary travels as `tokenizer.ggml.*` arrays, rebuilt as an HF `tokenizers`
  JSON by `openvision2.data.gguf_file`, so the decoder and its tokenizer always come
  from the same file.
"""

from __future__ import annotations

import re

import numpy as np

from openvision2.data import gguf_file

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

def _exact_float(x) -> float:
    """GGUF stores float32: 1e-5 comes back as 9.99999974e-06; keep the value the model was saved with."""
    return float(str(np.float32(x)))


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `permute`: per head, rows (j, c) with c in {0, 1} -> (c, j)."""
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _hf_name(name: str) -> str:
    base, _, suffix = name.rpartition(".")
    if suffix != "weight":
        raise ValueError(f"GGUF tensor {name!r} is not a weight; only bias-free LLaMA checkpoints are supported.")
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.weight"
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if not m or m.group(2) not in _LAYER_NAMES:
        raise ValueError(f"GGUF tensor {name!r} has no LLaMA counterpart (e.g. rope_freqs = RoPE scaling, "
                         "which our decoder does not implement).")
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"


def hf_config_from_metadata(reader) -> dict:
    """HF `LlamaConfig` fields from the `llama.*` and `tokenizer.ggml.*` metadata."""
    arch = gguf_file.field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture is {arch!r}; only 'llama' (LlamaForCausalLM-compatible) is supported.")
    width = int(gguf_file.field(reader, "llama.embedding_length"))
    heads = int(gguf_file.field(reader, "llama.attention.head_count"))
    head_dim = int(gguf_file.field(reader, "llama.attention.key_length", width // heads))
    if head_dim * heads != width:
        raise ValueError(f"GGUF heads are {head_dim} wide x {heads} != width {width}; our decoder needs width/heads.")
    rope_dim = int(gguf_file.field(reader, "llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ValueError(f"GGUF rotates {rope_dim} of {head_dim} head dims (partial RoPE); our decoder rotates all.")
    scaling = gguf_file.field(reader, "llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"GGUF uses RoPE scaling {scaling!r}; our decoder implements plain RoPE only.")
    names = {t.name for t in reader.tensors}
    tokens = gguf_file.field(reader, "tokenizer.ggml.tokens")
    cfg = dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        vocab_size=int(gguf_file.field(reader, "llama.vocab_size", len(tokens))),
        hidden_size=width,
        intermediate_size=int(gguf_file.field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(gguf_file.field(reader, "llama.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(gguf_file.field(reader, "llama.attention.head_count_kv", heads)),
        head_dim=head_dim,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        rms_norm_eps=_exact_float(gguf_file.field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=_exact_float(gguf_file.field(reader, "llama.rope.freq_base", 10_000.0)),
        max_position_embeddings=int(gguf_file.field(reader, "llama.context_length")),
        tie_word_embeddings="output.weight" not in names,
    )
    cfg.update({f"{key}_token_id": i for key, i in gguf_file.special_ids(reader).items()})
    return cfg


def load_llama_gguf(path: str) -> tuple[dict[str, np.ndarray], dict, str]:
    """Returns (HF-named float32 tensors, HF LlamaConfig dict, tokenizer.json string)."""
    from gguf import quants  # Local import: gguf is an optional extra.

    reader = gguf_file.open_reader(path)
    cfg = hf_config_from_metadata(reader)
    tokenizer_json = gguf_file.tokenizer_json_from_metadata(reader)
    tensors = {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        # np.array copies: float32 tensors would otherwise be read-only views of the memory-mapped file.
        w = np.array(quants.dequantize(t.data, t.tensor_type), np.float32).reshape(tuple(reversed(t.shape.tolist())))
        if name.endswith("q_proj.weight"):
            w = _unpermute(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = _unpermute(w, cfg["num_key_value_heads"])
        tensors[name] = w
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    expected |= {f"model.layers.{i}.{n}.weight" for i in range(cfg["num_hidden_layers"]) for n in _LAYER_NAMES.values()}
    missing = sorted(expected - tensors.keys())
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} LLaMA tensors, e.g. {missing[:3]}.")
    return tensors, cfg, tokenizer_json
