r"""OpenVision 2 at the published sizes and hyperparameters (arXiv 2509.01644 and its public scripts):
the whole CLIPA-style curriculum in one run, low-resolution pre-training then a
short high-resolution fine-tune.

  python -m openvision2.train --config=configs/openvision2.py:L/14 \
      --workdir=gs://bucket/ov2-L14 --config.data.path=gs://bucket/recap-v2/train-*

Arguments (`variant,key=value,...`):
- variant: encoder size, e.g. `L/14`, `So400m/14`, `B/16`, `g/14`.
- stage: `all` (default: pretrain then finetune), or `pretrain` / `finetune`
  alone (e.g. to fine-tune at another resolution from a pre-trained run's
  checkpoint, or to launch the stages as separate jobs).
- res / batch / samples: override the fine-tune's (or the single stage's)
  resolution, global batch, samples seen.
- keep: the visual-token keep ratio of every stage (0.35 published; 1.0 = no masking).
- runlocal: shrink everything (tiny model, a few steps, shapes data) for a smoke run.

Every stage field can be overridden on the command line, e.g.
`--config.stages.finetune.image_size=336 --config.stages.pretrain.steps=1000`;
`total_steps` follows the stages' steps.
"""

from openvision2 import config as config_lib

# Encoder -> decoder size pairs of the public scripts.
DECODER_FOR = {"B/16": "B", "L/14": "L", "L/16": "L", "So400m/14": "L", "H/14": "H", "g/14": "H"}

STAGES = {
    #            res(/14) samples  batch   lr per 256    warmup
    "pretrain": (84, 12.8e9, 32_768, 1.024e-3 / 128, 1_563),
    "finetune": (224, 1.02e9, 16_384, 2.56e-5 / 64, 1_563),
}


def _stage(name: str, variant: str, keep: float, res: int = 0, batch: int = 0, samples: float = 0.0):
    """The public numbers for one stage as a config stage (res adapted to the patch size)."""
    pub_res, pub_samples, pub_batch, lr, warmup = STAGES[name]
    patch = config_lib.encoder_size(variant).patch
    if not res:
        res = pub_res // 14 * patch if patch != 14 else pub_res  # same token grid for other patch sizes
    batch = batch or pub_batch
    steps = int((samples or pub_samples) // batch)
    return config_lib.stage(steps, image_size=res, batch_size=batch, keep_ratio=keep,
                            optim={"lr": lr, "warmup_steps": warmup},
                            data={"caption_field": "re_caption"})


def get_config(arg=None):
    a = config_lib.parse_arg(arg, variant="L/14", stage="all", res=0, batch=0, samples=0.0, keep=0.35,
                             runlocal=False)
    if a.stage not in ("all", *STAGES):
        raise ValueError(f"stage={a.stage!r}: choose all, pretrain or finetune.")
    names = list(STAGES) if a.stage == "all" else [a.stage]
    last = names[-1]

    c = config_lib.at_scale(config_lib.base_config("captioning"))
    c.model.encoder = a.variant
    c.model.decoder = DECODER_FOR.get(a.variant, "L")
    c.keep_ratio = a.keep
    c.caption_loss_weight = 2.0
    c.text.vocab = "bert_base_uncased"
    c.text.max_len = 128
    c.model.vocab_size = 32_000

    c.optim.b1, c.optim.b2 = 0.9, 0.95
    c.optim.weight_decay = 0.2
    c.optim.mu_dtype = "bfloat16"

    c.data.caption_field = "re_caption"
    c.data.augment = "inception_crop"
    c.data.area_min, c.data.area_max = 0.4, 1.0
    c.data.color_jitter, c.data.color_jitter_prob, c.data.grayscale_prob = 0.4, 0.8, 0.2

    stages = {n: _stage(n, a.variant, a.keep, *((a.res, a.batch, a.samples) if n == last else ())) for n in names}
    if a.runlocal:
        c.model.encoder = "mu/8"
        c.model.decoder = "mu"
        c.model.dtype = "float32"
        c.model.remat_policy = "none"
        c.optim.mu_dtype = ""
        c.text.vocab = "shapes"
        c.text.max_len = 16
        c.model.vocab_size = 32
        c.data.augment = "none"
        c.data.workers = 0
        c.data.shapes.image_size = 32
        c.data.shapes.num_train = 512
        c.data.shapes.num_eval = 64
        c.data.num_eval = 64
        c.mesh.data, c.mesh.fsdp = -1, 1
        c.log_every = 5
        c.checkpoint_every = 10
        for n, st in stages.items():
            st.steps = 10
            st.image_size = 16 if n == "pretrain" and len(stages) > 1 else 32
            st.batch_size = 8
            st.optim.warmup_steps = 2
            st.data.caption_field = "caption"
    # Top-level fields mirror the first stage (what a single-stage tool reads).
    first = stages[names[0]]
    c.image_size, c.batch_size = first.image_size, first.batch_size
    c.data.caption_field = first.data.caption_field
    c.optim.lr, c.optim.warmup_steps = first.optim.lr, first.optim.warmup_steps
    config_lib.set_stages(c, **stages)
    return c
