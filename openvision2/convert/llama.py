"""Our decoder <-> HF `LlamaForCausalLM` (names, layouts and config).

Our decoder is LLaMA: RMSNorm (eps 1e-5), SwiGLU, rotate-half RoPE, no
biases, optional GQA and tied embeddings, so the mapping is names and Dense
transposes only. A GGUF file reaches this table through
`openvision2.convert.gguf.load_llama_gguf`, which returns HF names.

  flat, report = load(tensors, cfg, target_flat, source)  # LlamaForCausalLM -> our flat decoder params
  tensors = ours_to_llama(params["decoder"], cfg)           # -> LlamaForCausalLM state dict
"""

from __future__ import annotations

import numpy as np

from openvision2 import sizes
from openvision2.convert import table
from openvision2.convert.table import DENSE, linear, rule

RMS_EPS = 1e-5  # layers.RMSNorm's default, which the decoder uses

STEM = [rule("embed/embedding", "model.embed_tokens.weight", pad_axis=0)]
BLOCK = [
    rule("block_{i}/ln1/scale", "model.layers.{i}.input_layernorm.weight"),
    *[r for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "o_proj"))
      for r in linear(f"block_{{i}}/{ours}", f"model.layers.{{i}}.self_attn.{theirs}", bias=False)],
    rule("block_{i}/ln2/scale", "model.layers.{i}.post_attention_layernorm.weight"),
    *[r for name in ("gate", "up", "down") for r in linear(f"block_{{i}}/{name}", f"model.layers.{{i}}.mlp.{name}_proj",
                                                           bias=False)],
]
FINAL = [rule("ln_final/scale", "model.norm.weight")]
LM_HEAD = [rule("lm_head/kernel", "lm_head.weight", DENSE, pad_axis=1)]
# Rotary caches some older exports store as buffers.
IGNORE = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)


def rules(cfg) -> list[table.Rule]:
    """Our decoder params (relative to `decoder/`) <-> LlamaForCausalLM keys."""
    depth = sizes.decoder_size(cfg.model.decoder).depth
    return STEM + table.expand(BLOCK, depth) + FINAL + ([] if cfg.model.tie_embeddings else LM_HEAD)


def hf_config(cfg, tokenizer=None, max_positions: int = 0) -> dict:
    """`LlamaConfig` fields; `rope_theta` and `rope_parameters` are both written so 4.57 and 5.x agree."""
    size = sizes.decoder_size(cfg.model.decoder)
    out = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": cfg.model.vocab_size,
        "hidden_size": size.width,
        "intermediate_size": size.mlp_dim,
        "num_hidden_layers": size.depth,
        "num_attention_heads": size.heads,
        "num_key_value_heads": cfg.model.kv_heads or size.heads,
        "head_dim": size.width // size.heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_positions or 4096,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": float(cfg.model.rope_theta),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.model.rope_theta)},
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": bool(cfg.model.tie_embeddings),
        "torch_dtype": "float32",
    }
    if tokenizer is not None:
        out.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    return out


def config_overrides(hf: dict) -> dict[str, object]:
    """Our config keys that reproduce a LlamaConfig (what `--init_decoder_from` asks a user to set)."""
    width, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim", width // heads) != width // heads:
        raise table.CheckpointMismatch(f"head_dim={hf['head_dim']} != hidden_size/num_attention_heads: our decoder "
                                       "derives head_dim from width and heads.")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise table.CheckpointMismatch("the checkpoint has attention/MLP biases; our LLaMA decoder has none.")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise table.CheckpointMismatch(f"rope type {rope.get('rope_type')!r} is not supported (only plain RoPE).")
    kv = hf.get("num_key_value_heads") or heads
    return {
        "model.decoder": f"mu,width={width},depth={hf['num_hidden_layers']},mlp_dim={hf['intermediate_size']},"
                         f"heads={heads}",
        "model.kv_heads": 0 if kv == heads else kv,
        "model.tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "model.rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
    }


def check_hf_config(hf: dict, cfg, source: str) -> list[str]:
    """Raises naming the `--config.*` fixes when the decoder architecture differs; returns notes."""
    want = config_overrides(hf)
    size, have_size = sizes.decoder_size(want["model.decoder"]), sizes.decoder_size(cfg.model.decoder)
    have = {"model.kv_heads": cfg.model.kv_heads if (cfg.model.kv_heads or have_size.heads) != have_size.heads else 0,
            "model.tie_embeddings": bool(cfg.model.tie_embeddings), "model.rope_theta": float(cfg.model.rope_theta)}
    fixes = [f"--config.model.decoder='{want['model.decoder']}'"] if size != have_size else []
    fixes += [f"--config.{k}={want[k]}" for k, v in have.items() if want[k] != v]
    if hf["vocab_size"] > cfg.model.vocab_size:
        fixes.append(f"--config.model.vocab_size={hf['vocab_size']} (or larger)")
    if fixes:
        raise table.CheckpointMismatch(f"{source} is a different decoder architecture; set {' '.join(fixes)}.")
    notes = []
    if abs(hf.get("rms_norm_eps", RMS_EPS) - RMS_EPS) > 1e-12:
        notes.append(f"the checkpoint's RMSNorm eps is {hf['rms_norm_eps']}, ours is {RMS_EPS}")
    if hf.get("hidden_act", "silu") != "silu":
        raise table.CheckpointMismatch(f"{source}: hidden_act={hf['hidden_act']!r}; our decoder is SwiGLU (silu).")
    return notes


def load(tensors, cfg, target_flat, source: str) -> tuple[dict, table.Report]:
    """HF-named tensors -> our flat decoder params (checked against `target_flat`)."""
    report = table.Report(source)
    ignore = IGNORE + ((r"lm_head\.weight",) if cfg.model.tie_embeddings else ())
    if cfg.model.tie_embeddings and "lm_head.weight" in tensors and "model.embed_tokens.weight" in tensors:
        if not np.array_equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]):
            report.notes.append("the checkpoint has a separate lm_head but the model ties embeddings: lm_head dropped "
                                "(set --config.model.tie_embeddings=False to keep it)")
    return table.load(tensors, rules(cfg), target_flat, report, ignore=ignore), report


def ours_to_llama(decoder_params, cfg) -> dict[str, np.ndarray]:
    """Our decoder params -> LlamaForCausalLM state dict (numpy)."""
    return table.export(table.flatten(decoder_params), rules(cfg))
