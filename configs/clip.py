r"""CLIP: an image tower and a text tower trained with the softmax contrastive loss only.

  python -m openvision2.train --config=configs/clip.py:L/14 --workdir=... --config.data.path=...
  python -m openvision2.train --config=configs/clip.py:tiny --workdir=/tmp/clip-tiny   # shapes, CPU

Published ViT-L/14 setup (Radford et al. 2021): 224 px, a CLS token pooled through the final
LayerNorm, a 12 x 768 causal text tower over 77 tokens read at `[eos]`, a 768-wide shared
embedding, a learnable temperature initialised at 0.07 and clamped at 0.01 (logit scale 100),
batch 32,768, Adam b2 0.98, eps 1e-6, decoupled weight decay 0.2, 2,000 warmup steps, cosine,
12.8B samples (32 epochs of 400M). Our tokenizer (BERT WordPiece, the ReCap captions) stands in
for CLIP's BPE. Arguments: `variant` (B/16, L/14) or `tiny`; `batch`, `samples`, `res`.
"""

from openvision2 import config as config_lib

# encoder -> (text tower, embedding width, peak LR): CLIP's B/16 and L/14.
SIZES = {"B/16": ("M", 512, 5e-4), "L/14": ("B", 768, 4e-4)}


def contrastive_tiny(objective: str):
    """The shapes demo as a contrastive recipe: demo encoder and data, a 2-layer text tower."""
    c = config_lib.set_recipe(config_lib.sibling_config(__file__, "demo.py"), objective)
    c.keep_ratio = 1.0
    c.model.text_encoder = "mu,width=128,depth=2,mlp_dim=512,heads=4"
    c.model.embed_dim = 128
    c.text.encoder_max_len = 16
    return c


def get_config(arg=None):
    a = config_lib.parse_arg(arg, variant="L/14", res=224, batch=32_768, samples=12.8e9)
    if a.variant == "tiny":
        c = contrastive_tiny("clip")
        c.total_steps = 800
        c.eval_every = 400
        return c
    if a.variant not in SIZES:
        raise ValueError(f"variant={a.variant!r}: choose one of {sorted(SIZES)} or tiny.")
    text, width, lr = SIZES[a.variant]
    c = config_lib.at_scale(config_lib.base_config("clip"))
    c.keep_ratio = 1.0
    c.image_size = a.res
    c.batch_size = a.batch
    c.total_steps = int(a.samples // a.batch)
    c.model.encoder = a.variant
    c.model.cls_token = True
    c.model.text_encoder = text
    c.model.embed_dim = width
    c.text.vocab = "bert_base_uncased"
    c.text.max_len = 77
    c.contrastive.init_temperature = 0.07
    c.contrastive.min_temperature = 0.01
    c.optim.lr = lr * 256 / 32_768  # per 256 samples: the published peak at batch 32,768
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.98, 1e-6
    c.optim.weight_decay = 0.2
    c.optim.warmup_steps = 2_000
    return c
