"""Models: the parts every recipe is built from, as flax linen modules.

`vit` (the image encoder), `decoder` (a LLaMA decoder with a visual prefix, KV-cache modes),
`text_encoder` (the CLIP-style text tower and the contrastive head), the composed models
(`captioner`, `coca`, `mmgem`), the shared `layers`, visual-token `masking`, greedy
`generate` and per-part `flops`. Every parameter carries logical axis names; special token
ids come in as module fields. Which model a config trains, and with which sizes, is its
recipe's business (`openvision2.recipes`).
"""
