r"""MM-GEM (arXiv 2405.19333): one decoder that both embeds and captions, in two stages.

  python -m openvision2.train --config=configs/mmgem.py:L/14 --workdir=... --config.data.path=<image-text> \
      --config.stages.regions.data.path=<records with regions>
  python -m openvision2.train --config=configs/mmgem.py:tiny --workdir=/tmp/mmgem-tiny   # shapes, CPU

- Stage `image`: image embedding (PoolAggregator tokens, MeanPool, h1) against the `[EMB]`
  text embedding (h2) with InfoNCE, plus captioning after the `[CAP]` context (h3); the loss
  is their plain sum. Everything trains.
- Stage `regions`: one box per example from the record (`regions`), RoIAlign features; region
  captions through h3 and soft prompts, region retrieval through a new identity-initialised
  h4. Only h3, the soft prompts and h4 train (`optim.trainable`); the rest stays frozen.

From the paper: ViT-L/14 with TinyLlama-1.1B as the decoder (22 layers, 2,048 wide, 32 heads,
4 KV heads, 5,632 SwiGLU), LAMB with weight decay 0.05, LR 5e-4 for the projections and 5e-5
for the backbones, temperature 0.07 with a floor of 0.01, captions of 50 tokens. Our
assumptions where the paper gives no number: batch 16,384, 1.28B samples for
stage 1, 20k steps at batch 1,024 for stage 2, 2,000 warmup steps, the 224 px PoolAggregator
grid of 4 x 4. To start from TinyLlama itself, add `--config.init_decoder_from=<HF dir>
--config.text.vocab=hf:<HF dir>` (the tokenizer travels with the decoder).
Arguments: `variant` (L/14) or `tiny`; `batch`, `samples`, `res`.
"""

from openvision2 import config as config_lib

TINYLLAMA = "mu,width=2048,depth=22,mlp_dim=5632,heads=32"
PROJECTIONS = "^(h1|h2|h3|h4|emb_token|cap_token|soft_prompt|log_scale)"


def get_config(arg=None):
    a = config_lib.parse_arg(arg, variant="L/14", res=224, batch=16_384, samples=1.28e9, region_steps=20_000,
                             region_batch=1_024)
    if a.variant == "tiny":
        return _tiny()
    c = config_lib.at_scale(config_lib.base_config("mmgem"))
    c.keep_ratio = 1.0
    c.image_size = a.res
    c.model.encoder = a.variant
    c.model.decoder = TINYLLAMA
    c.model.kv_heads = 4
    c.model.vocab_size = 32_000
    c.model.embed_dim = 2_048
    c.text.max_len = 50
    c.caption_loss_weight = 1.0
    c.contrastive.weight = 1.0
    c.contrastive.init_temperature = 0.07
    c.contrastive.min_temperature = 0.01
    c.mmgem.pool_grid, c.mmgem.roi_grid, c.mmgem.soft_prompts = 4, 4, 8
    c.optim.name = "lamb"
    c.optim.weight_decay = 0.05
    c.optim.lr_mults = "^(encoder|decoder)/=0.1"  # backbones 5e-5, projections 5e-4
    image_steps = int(a.samples // a.batch)
    c.batch_size, c.total_steps = a.batch, image_steps
    c.optim.lr, c.optim.warmup_steps = 5e-4 * 256 / a.batch, 2_000
    config_lib.set_stages(
        c,
        image=config_lib.stage(image_steps, batch_size=a.batch, optim={"lr": 5e-4 * 256 / a.batch}),
        regions=config_lib.stage(a.region_steps, batch_size=a.region_batch, mmgem={"region_task": "both"},
                                 optim={"lr": 5e-4 * 256 / a.region_batch, "warmup_steps": 500,
                                        "trainable": "^(h3|h4|soft_prompt)", "lr_mults": ""}))
    return c


def _tiny():
    """Shapes: the demo's encoder, decoder and data; stage 1 then the region stage."""
    c = config_lib.set_recipe(config_lib.sibling_config(__file__, "demo.py"), "mmgem")
    c.keep_ratio = 1.0
    c.model.embed_dim = 128
    c.mmgem.pool_grid, c.mmgem.roi_grid, c.mmgem.soft_prompts = 3, 2, 4
    c.eval_every = 0
    config_lib.set_stages(
        c,
        image=config_lib.stage(900, optim={"lr": 4e-3, "warmup_steps": 60}),
        regions=config_lib.stage(300, mmgem={"region_task": "both"},
                                 optim={"lr": 8e-3, "warmup_steps": 30, "trainable": "^(h3|h4|soft_prompt)"}))
    return c
