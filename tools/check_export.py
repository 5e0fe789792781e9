r"""Check a trained run's exports against the run itself, in the libraries that load them.

  python tools/check_export.py --workdir=/tmp/openvision2-demo [--images=a.png,b.jpg] [--formats=hf,timm,llava]

Exports the run (into a temporary directory), loads each export with transformers / timm (the
`[hf]` extra), and prints one JSON line per check:
- `hf`: `AutoModel` -> `SiglipVisionModel`; `last_hidden_state` on our `pixel_values` vs our
  `patch_tokens` (max abs), and `AutoImageProcessor` (the installed version's default backend, and
  PIL) vs our eval preprocessing (max and mean abs, and the size of one uint8 level in those units);
- `timm`: `forward_features` vs `patch_tokens`;
- `llava`: `AutoProcessor` + `LlavaForConditionalGeneration.generate` (greedy) vs `openvision2.caption`,
  caption by caption.
Without `--images` it uses held-out shapes images (a seed no run trains on) and three photos from
scikit-image. Nothing here is needed to export; it is how to see that an export is right.
"""

from __future__ import annotations

import json
import os
import tempfile

from absl import app, flags
import numpy as np

flags.DEFINE_string("workdir", None, "Run directory written by openvision2.train.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_list("images", [], "Image files to check on (default: 12 held-out shapes images + 3 photos).")
flags.DEFINE_list("formats", ["hf", "timm", "llava"], "Which exports to check.")
FLAGS = flags.FLAGS


def default_images(directory: str, size: int) -> list[str]:
    from PIL import Image
    from skimage import data as samples

    from openvision2.data import shapes

    rng = np.random.default_rng(1234)
    paths = []
    for i in range(12):
        image, _ = shapes.render(rng, size, 1 + i % 3)
        paths.append(os.path.join(directory, f"shapes-{i}.png"))
        Image.fromarray(image).save(paths[-1])
    for name in ("chelsea", "astronaut", "coffee"):
        paths.append(os.path.join(directory, f"{name}.jpg"))
        Image.fromarray(getattr(samples, name)()).save(paths[-1], quality=92)
    return paths


def main(argv):
    del argv
    import torch
    from PIL import Image

    from openvision2 import export
    from openvision2.inference import TrainedRun, caption_images, encode_images
    from openvision2.models.vit import pixel_norm_stats

    run = TrainedRun(FLAGS.workdir, FLAGS.step)
    with tempfile.TemporaryDirectory() as tmp:
        paths = FLAGS.images or default_images(tmp, run.cfg.data.shapes.image_size)
        ours = encode_images(run, run.load_images(paths))
        pixels = torch.from_numpy(ours["pixel_values"]).permute(0, 3, 1, 2).contiguous()
        report = lambda **row: print(json.dumps({"images": len(paths), **row}), flush=True)
        if "hf" in FLAGS.formats:
            import transformers
            out = os.path.join(tmp, "hf")
            export.write(run.params, run.cfg, out, "hf", run.step)
            model = transformers.AutoModel.from_pretrained(out).eval()
            with torch.no_grad():
                hidden = model(pixel_values=pixels).last_hidden_state.numpy()
            report(check="hf last_hidden_state vs patch_tokens", transformers=transformers.__version__,
                   model=type(model).__name__, max_abs=float(np.abs(hidden - ours["patch_tokens"]).max()))
            level = float(1 / 255 / min(pixel_norm_stats(run.cfg.model.pixel_norm)[1]))
            major = int(transformers.__version__.split(".")[0])
            for backend, kwargs in (("default", {}), ("pil", {"backend": "pil"} if major >= 5 else {"use_fast": False})):
                processor = transformers.AutoImageProcessor.from_pretrained(out, **kwargs)
                theirs = processor(images=[Image.open(p).convert("RGB") for p in paths],
                                   return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
                diff = np.abs(theirs - ours["pixel_values"])
                report(check=f"AutoImageProcessor ({backend}) vs our eval preprocessing",
                       processor=type(processor).__name__, max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                       pixels_differing=int((diff > 1e-5).sum()), one_uint8_level=level)
        if "timm" in FLAGS.formats:
            import timm
            out = os.path.join(tmp, "timm")
            export.write(run.params, run.cfg, out, "timm", run.step)
            net = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
            with torch.no_grad():
                feats = net.forward_features(pixels).numpy()
            report(check="timm forward_features vs patch_tokens", timm=timm.__version__,
                   max_abs=float(np.abs(feats - ours["patch_tokens"]).max()))
        if "llava" in FLAGS.formats:
            import transformers
            out = os.path.join(tmp, "llava")
            export.write(run.params, run.cfg, out, "llava", run.step, run.tokenizer)
            processor = transformers.AutoProcessor.from_pretrained(out)
            model = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
            ours_captions = caption_images(run, run.load_images(paths))
            theirs = []
            for path in paths:
                inputs = processor(text="<image>", images=Image.open(path).convert("RGB"), return_tensors="pt")
                with torch.no_grad():
                    tokens = model.generate(**inputs)
                theirs += processor.batch_decode(tokens[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            same = [a == b for a, b in zip(theirs, ours_captions)]
            report(check="llava generate vs openvision2.caption", transformers=transformers.__version__,
                   equal=int(sum(same)), differing=[(p, a, b) for p, a, b, s in zip(paths, ours_captions, theirs, same)
                                                    if not s])


if __name__ == "__main__":
    app.run(main)
