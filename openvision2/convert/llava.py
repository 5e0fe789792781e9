"""The whole captioner <-> HF `LlavaForConditionalGeneration` + its processor files.

Why it is the same function:
- vision tower: our encoder as a SigLIP vision model; LLaVA reads
  `hidden_states[-1]` (before `post_layernorm`), which is the `prenorm` our
  decoder reads, and `vision_feature_select_strategy="full"` keeps every token;
- projector: our `mlp` projector is LLaVA's linear-GELU(erf)-linear with biases;
- language model: our decoder as `LlamaForCausalLM` (see convert/llama.py);
- sequence: our decoder sees `[N visual tokens ; [bos] ; caption]` at positions
  0..N-1, N, N+1...; the processor expands `<image>` to N image tokens and the
  tokenizer's post-processor appends `[bos]` after them, and HF LLaVA numbers
  positions sequentially, so prompt and positions match token for token.
`<image>` takes the first unused row of our padded embedding table.
"""

from __future__ import annotations

import json

import tokenizers
from tokenizers import processors

from openvision2.convert import llama, siglip, table, vit
from openvision2.convert.table import linear

IMAGE_TOKEN = "<image>"
VISION = "model.vision_tower.vision_model."
LANGUAGE = {"model.": "model.language_model.", "lm_head.": "lm_head."}
PROJECTOR = linear("fc1", "model.multi_modal_projector.linear_1") + linear("fc2", "model.multi_modal_projector.linear_2")


def check_exportable(cfg):
    siglip.check_exportable(cfg)
    if cfg.model.projector != "mlp":
        raise ValueError(f"model.projector={cfg.model.projector!r} has no LLaVA equivalent: LLaVA's projector is a "
                         "2-layer GELU MLP with biases (model.projector=mlp). Export the encoder with --format=hf.")


def rules(cfg) -> list[table.Rule]:
    return (table.prefixed(siglip.rules(cfg), "encoder/", VISION) + table.prefixed(PROJECTOR, "projector/")
            + table.prefixed(llama.rules(cfg), "decoder/", LANGUAGE))


def flat_params(params, cfg) -> dict:
    flat = {f"encoder/{k}": v for k, v in vit.flat_encoder(params["encoder"], cfg).items()}
    for part in ("projector", "decoder"):
        flat.update({f"{part}/{k}": v for k, v in table.flatten(params[part]).items()})
    return flat


def num_image_tokens(cfg) -> int:
    return vit.grid(cfg) ** 2


def hf_tokenizer(tok, cfg) -> tuple[tokenizers.Tokenizer, int]:
    """Our tokenizer as an HF one: specials marked special (so `skip_special_tokens` drops exactly
    what our decode drops), `<image>` added, `[bos]` appended after the prompt."""
    tk = tokenizers.Tokenizer.from_str(tok.to_json())
    # What our decode drops is, by definition, what decodes to nothing on its own.
    hidden = [i for i in range(tok.vocab_size) if tok.decode([i]) == ""]
    tk.add_special_tokens([tokenizers.AddedToken(tk.id_to_token(i), special=True, normalized=False) for i in hidden])
    tk.add_special_tokens([tokenizers.AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    image_id = tk.token_to_id(IMAGE_TOKEN)
    if image_id >= cfg.model.vocab_size:
        raise ValueError(f"no free embedding row for {IMAGE_TOKEN}: the tokenizer fills all {cfg.model.vocab_size} "
                         "rows of model.vocab_size; LLaVA needs one spare row (train with a larger vocab_size).")
    bos = tk.id_to_token(tok.bos_id)
    tk.post_processor = processors.TemplateProcessing(single=f"$A {bos}", pair=f"$A {bos} $B:1",
                                                      special_tokens=[(bos, tok.bos_id)])
    return tk, image_id


def files(params, cfg, tok) -> tuple[dict, dict[str, dict | str]]:
    """(tensors, {filename: json object or text}) of the LLaVA directory."""
    check_exportable(cfg)
    tensors = table.export(flat_params(params, cfg), rules(cfg))
    tk, image_id = hf_tokenizer(tok, cfg)
    n, max_new = num_image_tokens(cfg), cfg.text.max_len - 1
    text_config = llama.hf_config(cfg, tok, max_positions=n + cfg.text.max_len)
    text_config.pop("architectures")
    vision_config = siglip.hf_config(cfg)
    vision_config.pop("architectures")
    config = {
        "model_type": "llava",
        "architectures": ["LlavaForConditionalGeneration"],
        "vision_config": vision_config,
        "text_config": text_config,
        "image_token_index": image_id,
        "image_seq_length": n,
        "projector_hidden_act": "gelu",  # exact erf GELU, as our Projector
        "vision_feature_select_strategy": "full",
        "vision_feature_layer": -1,
        "multimodal_projector_bias": True,
        "tie_word_embeddings": bool(cfg.model.tie_embeddings),
        "torch_dtype": "float32",
    }
    specials = {f"{k}_token": tk.id_to_token(i) for k, i in (("bos", tok.bos_id), ("eos", tok.eos_id),
                                                              ("pad", tok.pad_id))}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": n + cfg.text.max_len,
        "clean_up_tokenization_spaces": False,  # our decoder already cleans up; twice would differ
        "model_input_names": ["input_ids", "attention_mask"],  # no token_type_ids: generate() rejects them
        "extra_special_tokens": {"image_token": IMAGE_TOKEN},
        "processor_class": "LlavaProcessor",
    }
    processor_config = {
        "processor_class": "LlavaProcessor",
        "patch_size": cfg.image_size // vit.grid(cfg),
        "vision_feature_select_strategy": "full",
        "num_additional_image_tokens": 0,
        "image_token": IMAGE_TOKEN,
    }
    generation_config = {
        "do_sample": False,
        "num_beams": 1,
        "max_new_tokens": max_new,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
    }
    preprocessor = {**siglip.preprocessor_config(cfg), "processor_class": "LlavaProcessor"}
    return tensors, {
        "config.json": config,
        "tokenizer.json": json.loads(tk.to_str()),
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": {**specials, "additional_special_tokens": [IMAGE_TOKEN]},
        "processor_config.json": processor_config,
        "preprocessor_config.json": preprocessor,
        "generation_config.json": generation_config,
    }
