"""The optional TFDS eval adapter: a real TFDS ArrayRecord dataset, built here without TensorFlow."""

import io

import numpy as np
import pytest
from PIL import Image

from openvision2 import recipes
from openvision2.data import pipeline, shapes
from openvision2.data.tokenizer import get_tokenizer
from tests.test_train import tiny_train_cfg

tfds = pytest.importorskip("tensorflow_datasets", reason="TFDS is optional (the [tfds] / [test] extras)")

NUM = 10


def _png(image: np.ndarray) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    buf.seek(0)
    return buf


def _examples():
    """Shapes images with COCO-style nested captions (several per image)."""
    rng = np.random.default_rng(7)
    for i in range(NUM):
        image, caption = shapes.render(rng, 40, 1 + i % 3)
        yield i, {"image": _png(image), "captions": {"text": [caption, f"another caption {i}"]}}


class TinyCaptions(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
        return {"validation": self._generate_examples()}

    def _generate_examples(self):
        yield from _examples()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyCaptions(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def _cfg(tmp_path, data_dir, **data):
    cfg = tiny_train_cfg(tmp_path / "shapes")
    cfg.data.update(eval_path="tfds:tiny_captions", tfds_data_dir=data_dir, tfds_caption_key="captions/text",
                    num_eval=0, **data)
    return cfg


def test_eval_batches_read_a_tfds_split_in_order_without_augmentation(tmp_path, tfds_dir):
    cfg = _cfg(tmp_path, tfds_dir)
    tok = get_tokenizer(cfg.text.vocab)
    source = pipeline.eval_source(cfg.data)
    assert len(source) == NUM and "tiny_captions" in source.describe()
    batches = list(pipeline.eval_batches(cfg.data, recipes.get(cfg.objective).stream(cfg), tok, global_batch=8, host_batch=8, host_offset=0))
    assert len(batches) == 2
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == NUM and not valid[NUM:].any()
    # Each row is the TFDS example at that index: eval transform of its image, first caption.
    for g in range(NUM):
        b, r = divmod(g, 8)
        image, caption = source.example(g)
        from openvision2.data import preprocess
        np.testing.assert_array_equal(batches[b]["image"][r], preprocess.eval_transform(image, cfg.image_size))
        np.testing.assert_array_equal(batches[b]["text"][r], tok.encode([caption], cfg.text.max_len)[0])
        assert not caption.startswith("another")
    expected = {c["text"][0] for _, c in ((k, e["captions"]) for k, e in _examples())}
    assert {source.example(g)[1] for g in range(NUM)} == expected


def test_the_trainer_evaluates_on_a_tfds_set(tmp_path, tfds_dir):
    from openvision2 import train
    out = train.train(_cfg(tmp_path, tfds_dir), str(tmp_path / "run"))
    assert out["eval/num_examples"] == NUM and np.isfinite(out["eval/loss"])


def test_wrong_names_and_missing_datasets_say_what_to_set(tmp_path, tfds_dir):
    source = pipeline.eval_source(_cfg(tmp_path, tfds_dir, tfds_image_key="img").data)
    with pytest.raises(ValueError, match="tfds_image_key"):
        source.example(0)
    missing = pipeline.eval_source(_cfg(tmp_path, str(tmp_path / "empty")).data)
    with pytest.raises(FileNotFoundError, match="tfds build tiny_captions --file_format=array_record"):
        len(missing)
