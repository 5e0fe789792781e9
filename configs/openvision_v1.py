r"""OpenVision v1 / CLIPS: contrastive + captioning, the recipe OpenVision 2 removes the text
tower and the contrastive loss from. Matched to `configs/openvision2.py`: the same encoder,
decoder, tokenizer, curriculum, optimizer and data, so the two compare side by side.

  python -m openvision2.train --config=configs/openvision_v1.py:L/14 --workdir=... --config.data.path=...
  python -m openvision2.train --config=configs/openvision_v1.py:tiny --workdir=/tmp/ov1-tiny   # shapes, CPU

What v1 adds (OpenVision, arXiv 2505.04601, built on CLIPS):
- a CLIP-style causal text tower (for L/14 the 768 x 12 tower of CLIPA) reading up to 80
  tokens of a partial caption: one random sentence of the recaption
  (`data.contrastive_caption_mode="random_sentence"`), while the decoder learns the whole;
- a softmax contrastive loss with a learnable temperature (init 0.07, floor 0.01) between
  the pooled encoder output and the text tower, weighted 1 : 2 against captioning;
- no visual-token masking (`keep_ratio` 1.0): the decoder reads every visual token.

Arguments: those of `configs/openvision2.py` (variant, stage, res, batch, samples, runlocal,
keep), or `tiny`.
"""

from openvision2 import config as config_lib

# Text tower per encoder (CLIP/CLIPA pairings): width = the shared embedding width.
TEXT_FOR = {"B/16": "M", "L/14": "B", "L/16": "B", "So400m/14": "So400m", "H/14": "L", "g/14": "L"}


def make_v1(c, text_encoder: str, encoder_max_len: int):
    """Turns an OpenVision 2 config into its OpenVision v1 counterpart (same everything else)."""
    config_lib.set_recipe(c, "openvision")
    c.model.text_encoder = text_encoder
    c.model.embed_dim = config_lib.text_encoder_size(text_encoder).width
    c.text.encoder_max_len = encoder_max_len
    c.contrastive.weight = 1.0
    c.caption_loss_weight = 2.0
    c.contrastive.init_temperature = 0.07
    c.contrastive.min_temperature = 0.01
    return c


def get_config(arg=None):
    a = config_lib.parse_arg(arg, variant="L/14", stage="all", res=0, batch=0, samples=0.0, keep=1.0,
                             runlocal=False)
    if a.variant == "tiny":
        c = config_lib.sibling_config(__file__, "demo.py")
        make_v1(c, "mu,width=128,depth=2,mlp_dim=512,heads=4", encoder_max_len=16)
        c.keep_ratio = 1.0
        c.caption_loss_weight = 2.0
        return c
    ov2 = config_lib.sibling_config(__file__, "openvision2.py", ",".join(
        f"{k}={v}" for k, v in a.items() if k != "runlocal") + (",runlocal" if a.runlocal else ""))
    c = make_v1(ov2, TEXT_FOR.get(a.variant, "B"), encoder_max_len=80)
    c.data.contrastive_caption_mode = "random_sentence"
    if a.runlocal:
        c.model.text_encoder = "mu"
        c.model.embed_dim = 32
        c.text.encoder_max_len = 16
        c.data.contrastive_caption_mode = "field"
    return c
