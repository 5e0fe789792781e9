"""Caption tokenizers: fixed-length `[bos] tokens... [eos] [pad]...` rows over HF `tokenizers`.

Two families share one `Tokenizer` class:

- Our own vocabularies (`bert_base_uncased`, `shapes`): WordPiece with OpenVision's special
  ids. OpenVision reuses BERT's vocabulary but repurposes two unused entries: `[PAD]`=0,
  `[unused0]`=1 is the beginning-of-caption token and `[unused1]`=2 the end.
- An LLM's own tokenizer, so a decoder initialised from that LLM keeps its vocabulary:
  `hf:<tokenizer.json or its directory>` or `gguf:<model.gguf>` (rebuilt from the file by
  `openvision2.data.gguf_file`). bos/eos are the model's; see `llm_special_ids` for pad.

Control tokens are never produced from caption text: a caption that literally contains
"[PAD]" or "<|im_end|>" is tokenised as text instead of injecting control ids.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from openvision2.data import gguf_file

BERT_VOCAB_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "bert_base_uncased_vocab.txt")
BERT_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"

# First guess at how many characters max_len tokens span; only a speed knob. `_clean_prefix`
# makes the kept tokens exact whatever the guess, and a caption whose prefix yields too few
# tokens is retried with a 4x longer prefix, so a 100k-character caption costs ~1k characters
# of tokenisation while whitespace runs, long words or 4-token emoji cannot truncate it early.
_CHARS_PER_TOKEN_BUDGET = 8
# Cut points: whitespace that every tokenizer we build (BERT, byte-level BPE, SentencePiece
# metaspace) treats as a word boundary.
_CUT_CHARS = (" ", "\n", "\t")


class Tokenizer:
    """Fixed-length caption encoder over a `tokenizers.Tokenizer`: `[bos] tokens... [eos] [pad]...`."""

    def __init__(self, name: str, backend: tokenizers.Tokenizer, *, pad_id: int, bos_id: int, eos_id: int,
                 hidden_ids: Sequence[int] = ()):
        """`hidden_ids` are further ids that decode drops (BERT's [CLS]/[SEP], an LLM's control tokens)."""
        self.name = name
        self._tk = backend
        # Special tokens in caption text stay text (see module docstring); not serialised by tokenizers.
        self._tk.encode_special_tokens = True
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        for key, i in dict(pad_id=pad_id, bos_id=bos_id, eos_id=eos_id).items():
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"tokenizer {name!r}: {key}={i} is outside the vocabulary of {self.vocab_size}")
        if pad_id == eos_id:
            raise ValueError(f"tokenizer {name!r}: pad and eos are both id {pad_id}; the loss masks pad, so eos "
                             "would never be learned")
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self._hidden_ids = frozenset([pad_id, bos_id, eos_id, *hidden_ids])

    def __reduce__(self):
        # Carries the whole vocabulary, so grain worker processes need neither the source file nor a re-parse.
        return (_from_json, (self.name, self.to_json(), self.pad_id, self.bos_id, self.eos_id,
                             tuple(sorted(self._hidden_ids))))

    def to_json(self) -> str:
        """The backend as an HF tokenizer.json string (what an exported model ships)."""
        return self._tk.to_str()

    def encode(self, texts: Sequence[str | None], max_len: int) -> np.ndarray:
        """int32 [N, max_len]; content is cut at max_len - 2 tokens so `[eos]` is always present.

        The kept tokens are exactly the first tokens of the full caption, however long it is.
        """
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 to hold [bos] and [eos], got {max_len}")
        budget = max_len - 2
        texts = [t or "" for t in texts]
        limit = budget * _CHARS_PER_TOKEN_BUDGET + 16
        heads = [_clean_prefix(t, limit) for t in texts]
        out = np.full((len(texts), max_len), self.pad_id, dtype=np.int32)
        out[:, 0] = self.bos_id
        for row, (text, head, enc) in enumerate(zip(texts, heads, self._tk.encode_batch(heads, add_special_tokens=False))):
            ids, grown = enc.ids, limit
            while len(ids) < budget and len(head) < len(text):
                grown *= 4
                head = _clean_prefix(text, grown)
                ids = self._tk.encode(head, add_special_tokens=False).ids
            ids = ids[:budget]
            out[row, 1:1 + len(ids)] = ids
            out[row, 1 + len(ids)] = self.eos_id
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text up to the first `[eos]`; specials and ids outside the vocabulary (the model's
        padded embedding rows) are dropped."""
        ids = [int(i) for i in ids]
        if ids and ids[0] == self.bos_id:
            ids = ids[1:]
        if self.eos_id in ids:
            ids = ids[:ids.index(self.eos_id)]
        kept = [i for i in ids if 0 <= i < self.vocab_size and i not in self._hidden_ids]
        return self._tk.decode(kept, skip_special_tokens=False)


def _from_json(name, tokenizer_json, pad_id, bos_id, eos_id, hidden_ids):
    return Tokenizer(name, tokenizers.Tokenizer.from_str(tokenizer_json), pad_id=pad_id, bos_id=bos_id,
                     eos_id=eos_id, hidden_ids=hidden_ids)


def _clean_prefix(text: str, limit: int) -> str:
    """The longest prefix of at most `limit` characters whose tokens are a prefix of `text`'s.

    Pre-tokenizers decide each split from the characters around it (GPT-2's regex looks at
    most 3 ahead) and BPE/WordPiece then work inside one split, so cutting just before a
    whitespace character that follows a non-whitespace one changes no earlier token: the
    last word ends there in the full text too, and no whitespace run is cut short. Returns ""
    when no such cut exists within `limit` (the caller then asks for a longer prefix).
    """
    if len(text) <= limit:
        return text
    end = limit
    while end > 0:
        cut = max(text.rfind(c, 0, end + 1) for c in _CUT_CHARS)
        if cut <= 0:
            return ""
        if not text[cut - 1].isspace():
            return text[:cut]
        end = cut - 1
    return ""


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def load_bert_vocab(path: str = BERT_VOCAB_PATH) -> list[str]:
    digest = file_sha256(path)
    if digest != BERT_VOCAB_SHA256:
        raise ValueError(f"{path} has sha256 {digest}, expected {BERT_VOCAB_SHA256}: the vendored vocab is corrupt")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def shapes_vocab() -> list[str]:
    """Compact vocabulary for the synthetic shapes captions, with BERT-compatible special ids."""
    from openvision2.data import shapes  # Local import: shapes is only needed for this tokenizer.
    return ["[PAD]", "[bos]", "[eos]", "[UNK]", *shapes.VOCAB_WORDS, ",", "."]


def wordpiece(name: str, vocab: Sequence[str], *, pad: str, bos: str, eos: str, unk: str = "[UNK]",
              hidden: Sequence[str] = ()) -> Tokenizer:
    """BERT-uncased WordPiece over `vocab`. The specials are deliberately not registered as added
    tokens, so their literal text is tokenised as text."""
    if len(set(vocab)) != len(vocab):
        raise ValueError(f"tokenizer {name!r}: vocabulary has duplicate entries")
    index = {tok: i for i, tok in enumerate(vocab)}
    tk = tokenizers.Tokenizer(models.WordPiece(index, unk_token=unk))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return Tokenizer(name, tk, pad_id=index[pad], bos_id=index[bos], eos_id=index[eos],
                     hidden_ids=[index[t] for t in hidden])


def llm_special_ids(backend: tokenizers.Tokenizer, *, bos: int | None, eos: int | None,
                    pad: int | None) -> tuple[int, int, int]:
    """(pad, bos, eos) for an LLM tokenizer, from the model's declared ids.

    eos is required; bos defaults to eos (GPT-2 style models use one `<|endoftext|>` for both,
    and our layout works with that). pad must differ from eos, because the captioning loss
    masks pad targets and eos is a target; chat models often declare pad = eos
    (SmolLM2-Instruct: pad=eos=`<|im_end|>`). The documented choice then is the
    lowest-id special token that is neither bos nor eos (SmolLM2: 0, `<|endoftext|>`): pad
    sits after eos, where no kept position attends and no loss is taken, so its embedding
    never matters.
    """
    if eos is None:
        raise ValueError("the LLM tokenizer declares no eos token; captions need one to end")
    bos = eos if bos is None else bos
    if pad is None or pad in (bos, eos):
        specials = sorted(i for i, t in backend.get_added_tokens_decoder().items() if t.special and i not in (bos, eos))
        if not specials:
            raise ValueError("the LLM tokenizer has no pad token distinct from bos/eos and no spare special token")
        pad = specials[0]
    return pad, bos, eos


def _llm_tokenizer(name: str, tokenizer_json: str, *, bos, eos, pad) -> Tokenizer:
    tk = tokenizers.Tokenizer.from_str(tokenizer_json)
    pad_id, bos_id, eos_id = llm_special_ids(tk, bos=bos, eos=eos, pad=pad)
    hidden = [i for i, t in tk.get_added_tokens_decoder().items() if t.special]
    return Tokenizer(name, tk, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id, hidden_ids=hidden)


def _hf_special_ids(tk: tokenizers.Tokenizer, directory: str) -> dict[str, int | None]:
    """bos/eos/pad ids from the HF files beside tokenizer.json: tokenizer_config.json names the
    tokens, config.json (fallback) gives ids."""
    def read(filename):
        path = os.path.join(directory, filename)
        if not os.path.isfile(path):
            return {}
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    tok_cfg, model_cfg = read("tokenizer_config.json"), read("config.json")
    out = {}
    for key in ("bos", "eos", "pad"):
        token = tok_cfg.get(f"{key}_token")
        token = token.get("content") if isinstance(token, dict) else token
        i = tk.token_to_id(token) if token else None
        if i is None:
            i = model_cfg.get(f"{key}_token_id")
            i = i[0] if isinstance(i, list) else i
        out[key] = i
    if out["eos"] is None:
        raise ValueError(f"no eos token for the tokenizer in {directory}: add a tokenizer_config.json with "
                         "'eos_token' (and 'bos_token') beside tokenizer.json")
    return out


def load_hf_tokenizer(path: str, name: str | None = None) -> Tokenizer:
    """An HF tokenizer.json (or a directory holding one, e.g. a model snapshot)."""
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} not found: 'hf:' needs a tokenizer.json or a directory containing one")
    with open(file, encoding="utf-8") as f:
        tokenizer_json = f.read()
    ids = _hf_special_ids(tokenizers.Tokenizer.from_str(tokenizer_json), os.path.dirname(os.path.abspath(file)))
    return _llm_tokenizer(name or f"hf:{path}", tokenizer_json, **ids)


def load_gguf_tokenizer(path: str, name: str | None = None) -> Tokenizer:
    """The vocabulary inside a GGUF file (metadata only; the weights are not read)."""
    tokenizer_json, ids = gguf_file.load_tokenizer(path)
    return _llm_tokenizer(name or f"gguf:{path}", tokenizer_json, **ids)


@functools.lru_cache(maxsize=None)
def get_tokenizer(name: str) -> Tokenizer:
    if name == "bert_base_uncased":
        return wordpiece(name, load_bert_vocab(), pad="[PAD]", bos="[unused0]", eos="[unused1]",
                         hidden=("[CLS]", "[SEP]", "[MASK]"))
    if name == "shapes":
        return wordpiece(name, shapes_vocab(), pad="[PAD]", bos="[bos]", eos="[eos]")
    kind, _, path = name.partition(":")
    if kind == "hf" and path:
        return load_hf_tokenizer(path, name)
    if kind == "gguf" and path:
        return load_gguf_tokenizer(path, name)
    raise ValueError(f"unknown tokenizer {name!r}; choose 'bert_base_uncased', 'shapes', "
                     "'hf:<tokenizer.json or its directory>' or 'gguf:<model.gguf>'")
