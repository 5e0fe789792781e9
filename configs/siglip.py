r"""SigLIP: image and text towers trained with the pairwise sigmoid loss only.

  python -m openvision2.train --config=configs/siglip.py:So400m/14 --workdir=... --config.data.path=...
  python -m openvision2.train --config=configs/siglip.py:tiny --workdir=/tmp/siglip-tiny   # shapes, CPU

Published setup (Zhai et al. 2023): no CLS token, MAP-head pooling, a text tower of the image
tower's width over 64 tokens, a learnable temperature initialised at 10 (t' = log 10) and bias
at -10, batch 32,768, Adam b2 0.95, peak LR 1e-3, decoupled weight decay 1e-4, cosine. The loss
runs chunked: each device scores its images against one device's texts at a time while the text
chunks travel round a ring, so per-device memory does not grow with the device count. Arguments:
`variant` (B/16, So400m/14) or `tiny`; `batch`, `samples`, `res`.
"""

from openvision2 import config as config_lib

# encoder -> text tower (same width): SigLIP's B/16 and So400m/14.
TEXT_FOR = {"B/16": "B", "So400m/14": "So400m"}


def get_config(arg=None):
    a = config_lib.parse_arg(arg, variant="So400m/14", res=224, batch=32_768, samples=9e9)
    if a.variant == "tiny":
        return config_lib.set_recipe(config_lib.sibling_config(__file__, "clip.py", "tiny"), "siglip")
    if a.variant not in TEXT_FOR:
        raise ValueError(f"variant={a.variant!r}: choose one of {sorted(TEXT_FOR)} or tiny.")
    c = config_lib.set_recipe(config_lib.sibling_config(__file__, "clip.py", "L/14"), "siglip")
    c.image_size, c.batch_size = a.res, a.batch
    c.total_steps = int(a.samples // a.batch)
    c.model.encoder = a.variant
    c.model.cls_token = False
    c.model.pool = "map"
    c.model.text_encoder = TEXT_FOR[a.variant]
    c.model.embed_dim = config_lib.encoder_size(a.variant).width
    c.text.max_len = 64
    c.contrastive.loss = "sigmoid"
    c.contrastive.init_temperature = 0.1
    c.contrastive.init_bias = -10.0
    c.contrastive.chunked = True
    c.optim.lr = 1e-3 * 256 / 32_768  # per 256 samples: peak 1e-3 at the published batch
    c.optim.b2, c.optim.eps = 0.95, 1e-8
    c.optim.weight_decay = 1e-4
    c.optim.warmup_steps = 5_000
    return c
