r"""CoCa: contrastive captioners (Yu et al. 2022) in the same framework.

  python -m openvision2.train --config=configs/coca.py:B/16 --workdir=... --config.data.path=...
  python -m openvision2.train --config=configs/coca.py:tiny --workdir=/tmp/coca-tiny   # shapes, CPU

CoCa-Base: a ViT-B image encoder; a text decoder of 12 unimodal + 12 multimodal layers,
768 wide (our LLaMA blocks, SwiGLU of the same parameter count as a 3,072 GELU MLP); an
attentional pooler with 1 query for the contrastive embedding and one with 256 queries that
the multimodal layers cross-attend to; contrastive (softmax, learnable temperature) and
captioning weighted 1 : 2; batch 65,536 for 500k steps (32.8B samples), peak LR 8e-4, weight
decay 0.01, b2 0.999. (CoCa trained with Adafactor at 288 px with 18 px patches; we use Adam and
the 224 / 16 grid.)
Arguments: `variant` (B/16, L/14) or `tiny`; `batch`, `samples`, `res`.
"""

from openvision2 import config as config_lib

DECODER_FOR = {"B/16": "L,depth=24", "L/14": "H,depth=24"}


def get_config(arg=None):
    a = config_lib.parse_arg(arg, variant="B/16", res=224, batch=65_536, samples=32.8e9)
    if a.variant == "tiny":
        c = config_lib.set_recipe(config_lib.sibling_config(__file__, "demo.py"), "coca")
        c.keep_ratio = 1.0
        c.caption_loss_weight = 2.0
        c.model.pool = "none"
        c.model.embed_dim = 128
        c.coca.unimodal_layers = 1
        c.coca.caption_queries = 16
        return c
    if a.variant not in DECODER_FOR:
        raise ValueError(f"variant={a.variant!r}: choose one of {sorted(DECODER_FOR)} or tiny.")
    c = config_lib.at_scale(config_lib.base_config("coca"))
    c.keep_ratio = 1.0
    c.image_size, c.batch_size = a.res, a.batch
    c.total_steps = int(a.samples // a.batch)
    c.model.encoder = a.variant
    c.model.decoder = DECODER_FOR[a.variant]
    c.model.pool = "none"
    c.model.embed_dim = config_lib.decoder_size(c.model.decoder).width
    c.coca.unimodal_layers = config_lib.decoder_size(c.model.decoder).depth // 2
    c.coca.caption_queries = 256
    c.caption_loss_weight = 2.0
    c.contrastive.weight = 1.0
    c.text.max_len = 64
    c.optim.lr = 8e-4 * 256 / 65_536  # per 256 samples: the published peak at batch 65,536
    c.optim.b1, c.optim.b2 = 0.9, 0.999
    c.optim.weight_decay = 0.01
    c.optim.warmup_steps = 2_000
    return c
