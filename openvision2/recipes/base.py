"""What every recipe is asked, and the answers most recipes share.

A recipe is a `Recipe` subclass in one module, registered with `@register`. It owns
everything that makes it different from the others:

- `defaults()`: the config keys only it (and recipes like it) reads, at their defaults;
- capability flags: `parts` (model parts beyond the ViT: "decoder", "text_encoder"),
  `drops_visual_tokens`, `captions` (a caption decoder: eval caption loss, greedy captions,
  the caption command), `embeds` (image and text embeddings in one space: retrieval),
  `has_regions(cfg)`, and `export_formats`;
- `views(cfg)`: what its batches carry beyond image and caption (handed to the pipeline);
- `build_model(cfg, ids, mode)`, `objective(cfg, ids)` (its loss) and `train_flops(cfg)`;
- `validate(cfg)`: what a config of this recipe must satisfy.

The objective a recipe returns implements:
- `prepare(batch, step)`: the step's random choices (token masks) for the global batch;
- `loss(model, params, batch) -> (numerator, sums)`: the trainer differentiates `numerator` and
  divides it (and the gradient) by `sums["count"]` once; `sums` may carry `correct` (token
  accuracy), `tokens` and `scalars` (logged as `train/<name>`);
- `eval_sums(model, params, batch)` (recipes that caption): teacher-forced sums over the
  batch's valid rows, no masking;
- `embed(model, params, batch[, region]) -> (image, text)` (recipes that embed): L2-normalised
  embeddings for retrieval.

Evaluators (`openvision2/evals/`) call the models' own methods: `embed_images(images)` and
`embed_texts(tokens)` (recipes that embed; the text is `embed_text_len(cfg)` tokens), and
`caption_context(images)` / `caption_logits(context, text)` (recipes that caption: the image
encoded once, then any number of captions scored after it). `default_evals()` names the
evaluators a recipe's runs measure themselves with unless the config says otherwise.

Nothing outside `openvision2/recipes/` names a recipe: it asks the recipe instead.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from openvision2.data import pipeline
from openvision2.models import generate


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The tokenizer's control ids, which models and losses are handed (they never load a tokenizer)."""

    pad: int
    bos: int
    eos: int

    @classmethod
    def of(cls, tokenizer) -> SpecialIds:
        return cls(pad=tokenizer.pad_id, bos=tokenizer.bos_id, eos=tokenizer.eos_id)


class Objective:
    """The base of a recipe's objective (see the module docstring): `prepare` draws nothing."""

    def prepare(self, batch, step):
        del step
        return batch


class Recipe:
    name: ClassVar[str] = ""
    parts: ClassVar[tuple[str, ...]] = ()
    drops_visual_tokens: ClassVar[bool] = False
    captions: ClassVar[bool] = False
    embeds: ClassVar[bool] = False
    export_formats: ClassVar[tuple[str, ...]] = ("hf", "timm")  # the encoder alone

    def defaults(self) -> dict:
        """The config keys this recipe reads beyond the run-level ones, nested, at their defaults."""
        return {}

    def embed_text_len(self, cfg) -> int:
        """Tokens per text the model's text embedding reads (recipes that embed)."""
        return int(cfg.text.max_len)

    def default_evals(self) -> dict:
        """`config.evals` of a run of this recipe: the built-in offline sets, each measured at the
        end of every stage (a config replaces or extends them; `every=-1` turns one off)."""
        evals = {}
        if self.captions or self.embeds:  # a contrastive captioner is measured both ways
            evals["zeroshot"] = {"type": "zeroshot", "data": "shapes_classes",
                                 "method": "both" if self.captions and self.embeds else "auto"}
        if self.embeds:
            evals["retrieval"] = {"type": "retrieval", "data": "shapes_captions"}
        if self.captions:
            evals["captioning"] = {"type": "captioning", "data": "shapes_captions"}
        evals["digits"] = {"type": "linear_probe", "data": "digits"}
        evals["faces"] = {"type": "linear_probe", "data": "lfw"}
        return evals

    def has_regions(self, cfg) -> bool:
        """Whether `cfg` trains (and evaluates) at the region level."""
        del cfg
        return False

    def validate(self, cfg) -> None:
        """Fails, naming the fix, when `cfg` asks this recipe for something it does not do."""
        if cfg.keep_ratio < 1.0 and not self.drops_visual_tokens:
            raise ValueError(f"objective={self.name!r} does not drop visual tokens, so keep_ratio={cfg.keep_ratio} "
                             "would be ignored; set --config.keep_ratio=1.0.")
        if self.embeds and int(cfg.grad_accum_steps) > 1:
            raise ValueError(f"objective={self.name!r} has a contrastive loss, whose negatives are the whole batch: "
                             f"grad_accum_steps={cfg.grad_accum_steps} would shrink them to one micro-batch. Use "
                             "--config.grad_accum_steps=1 (shard the batch over more devices, or remat, to fit memory).")

    def views(self, cfg) -> pipeline.Views:
        """What an example carries beyond its image and caption."""
        del cfg
        return pipeline.Views()

    def stream(self, cfg, seed: int | None = None) -> pipeline.Stream:
        """The example stream `cfg` trains on (under `seed`, default the config's)."""
        return pipeline.Stream(seed=int(cfg.seed if seed is None else seed), image_size=int(cfg.image_size),
                               max_len=int(cfg.text.max_len), views=self.views(cfg))

    def batch_spec(self, cfg, batch: int) -> dict[str, tuple[tuple[int, ...], jnp.dtype]]:
        """name -> (shape, dtype) of every array in a train batch of `batch` rows."""
        return {k: (shape, jnp.dtype(dtype)) for k, (shape, dtype) in self.stream(cfg).batch_fields(batch).items()}

    def build_model(self, cfg, ids: SpecialIds, mode: str = "train"):
        """The flax module `cfg` trains; `mode` (train | prefill | decode) matters to captioning models."""
        raise NotImplementedError(f"recipe {self.name!r} ({type(self).__qualname__}) does not define build_model()")

    def objective(self, cfg, ids: SpecialIds):
        raise NotImplementedError(f"recipe {self.name!r} ({type(self).__qualname__}) does not define objective()")

    def train_flops(self, cfg) -> float:
        """Model FLOPs of one training step (forward + backward = 3x forward). Remat recomputation is
        not model work and is not counted, as is usual for MFU."""
        raise NotImplementedError(f"recipe {self.name!r} ({type(self).__qualname__}) does not define train_flops()")

    def init_params(self, model, cfg, rng):
        """Initial parameters (boxed with logical axis metadata): the model's `initialise` on a
        one-row batch of zeros touches every parameter it has."""
        batch = {k: jnp.zeros(shape, dtype) for k, (shape, dtype) in self.batch_spec(cfg, 1).items()}
        return model.init(rng, batch, method="initialise")["params"]

    def abstract_params(self, cfg, ids: SpecialIds):
        """Shapes and dtypes of the parameters, boxed with their logical axes; nothing is computed."""
        return jax.eval_shape(lambda: self.init_params(self.build_model(cfg, ids), cfg, jax.random.key(0)))

    def greedy_fn(self, cfg, ids: SpecialIds, max_new_tokens: int = 0):
        """Jitted `fn(params, images_uint8, boxes=None) -> tokens [B, max_new_tokens]` (default: the
        caption length); build it once and reuse it, it compiles once per batch shape."""
        if not self.captions:
            raise ValueError(f"objective={self.name!r} has no caption decoder")
        return generate.make_greedy_fn(self.build_model(cfg, ids, "prefill"), self.build_model(cfg, ids, "decode"),
                                       max_new_tokens or int(cfg.text.max_len) - 1, ids.bos, ids.eos, ids.pad)
