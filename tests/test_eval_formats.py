"""Eval sets from users' files (`evals/formats.py`): each format written for real here, read
through `sets.load`, decoded through `Images.load`."""

import importlib.util
import io
import json
import logging
import os
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from openvision2 import paths
from openvision2.data import preprocess, records
from openvision2.evals import formats, sets

CLS, CAP = sets.CLASSIFICATION, sets.CAPTIONS
HAVE_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None


def _pixels(seed: int, size=(40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def _write(path, data: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _expected(array: np.ndarray) -> np.ndarray:
    return preprocess.eval_transform(array, 32)


def _decode_all(s, n=None):
    n = len(s) if n is None else n
    out, ok, errors = s.images.load(range(n), 32)
    assert out.shape == (n, 32, 32, 3) and out.dtype == np.uint8
    return out, ok, errors


# ---------------------------------------------------------------------------------------------
# ImageFolder


@pytest.fixture
def folder(tmp_path):
    """cat: 1 PNG (+ a non-image file and a hidden one), golden_retriever: a JPEG and a PNG."""
    root = tmp_path / "pets"
    _write(str(root / "golden_retriever" / "b.png"), _encode(_pixels(2)))
    _write(str(root / "golden_retriever" / "a.JPG"), _encode(_pixels(1), "JPEG"))
    _write(str(root / "cat" / "c.png"), _encode(_pixels(3)))
    _write(str(root / "cat" / "notes.txt"), b"not an image")
    _write(str(root / "cat" / ".hidden.png"), b"junk")
    return root


def test_image_folder_reads_sorted_classes_and_images_with_clip_templates(folder):
    s = sets.load(str(folder), CLS, image_size=32)
    assert isinstance(s, sets.ClassificationSet) and s.name == "pets"
    assert s.classnames == ["cat", "golden retriever"] and s.templates == list(sets.CLIP_TEMPLATES)
    assert s.labels.tolist() == [0, 1, 1]
    assert [os.path.relpath(p, folder) for p in s.images.items] == [
        "cat/c.png", "golden_retriever/a.JPG", "golden_retriever/b.png"]  # items are paths: decoded lazily
    out, ok, errors = _decode_all(s)
    assert ok.all() and not errors
    np.testing.assert_array_equal(out[0], _expected(_pixels(3)))
    np.testing.assert_array_equal(out[2], _expected(_pixels(2)))
    assert len(sets.load(str(folder), CLS, image_size=32, num=2)) == 2


def test_image_folder_files_name_classes_and_prompts_and_a_corrupt_image_is_skipped(folder):
    (folder / "classnames.txt").write_text("kitty\ngolden retriever dog\n")
    (folder / "templates.txt").write_text("a photo of {a} {c}.\n\nart of the {c}.\n")
    _write(str(folder / "cat" / "d.jpeg"), b"\xff\xd8 not really a jpeg")
    s = sets.load(str(folder), CLS, image_size=32)
    assert s.classnames == ["kitty", "golden retriever dog"]
    assert s.templates == ["a photo of {a} {c}.", "art of the {c}."]
    assert sets.fill(s.templates[0], s.classnames[0]) == "a photo of a kitty."
    assert s.labels.tolist() == [0, 0, 1, 1]
    out, ok, errors = _decode_all(s)
    assert ok.tolist() == [True, False, True, True] and len(errors) == 1 and "item 1" in errors[0]
    assert not out[1].any()  # the bad image is a black square marked not ok
    np.testing.assert_array_equal(out[3], _expected(_pixels(2)))


def test_image_folder_layout_errors_say_what_to_fix(folder, tmp_path):
    (folder / "classnames.txt").write_text("kitty\n")
    with pytest.raises(ValueError, match=r"1 class names for 2 class directories"):
        sets.load(str(folder), CLS, image_size=32)
    (folder / "classnames.txt").unlink()
    (folder / "templates.txt").write_text("a photo of a {c}.\na photo of a thing.\n")
    with pytest.raises(ValueError, match=r"template 2 \('a photo of a thing.'\) has no \{c\}"):
        sets.load(str(folder), CLS, image_size=32)
    (folder / "templates.txt").unlink()
    with pytest.raises(ValueError, match="is an ImageFolder tree.*needs a captions set"):
        sets.load(str(folder), CAP, image_size=32)
    with pytest.raises(TypeError, match="unknown eval set option.*colour"):
        sets.load(str(folder), CLS, image_size=32, colour="red")
    (folder / "empty_class").mkdir()
    with pytest.raises(ValueError, match="without images \\(empty_class\\)"):
        sets.load(str(folder), CLS, image_size=32)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        sets.load(str(tmp_path / "nowhere"), CLS, image_size=32)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(_encode(_pixels(0)))
    with pytest.raises(ValueError, match=r"is neither an ImageFolder tree \(<dir>/<class>/<image>\), a COCO"):
        sets.load(str(tmp_path / "flat"), CLS, image_size=32)


# ---------------------------------------------------------------------------------------------
# COCO captions JSON


def test_coco_official_json_groups_captions_by_image(tmp_path):
    images = tmp_path / "val2017"
    for i in (1, 2):
        _write(str(images / f"{i:012d}.jpg"), _encode(_pixels(10 + i), "JPEG"))
    ann = {"images": [{"id": 7, "file_name": "000000000001.jpg"}, {"id": 9, "file_name": "000000000002.jpg"},
                      {"id": 11, "file_name": "000000000003.jpg"}, {"id": 12, "file_name": "000000000004.jpg"}],
           "annotations": [{"id": 1, "image_id": 9, "caption": "A dog. "}, {"id": 2, "image_id": 7, "caption": "cat"},
                           {"id": 3, "image_id": 9, "caption": "a brown dog"},
                           {"id": 4, "image_id": 11, "caption": "missing file"}]}
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "captions_val2017.json").write_text(json.dumps(ann))
    s = sets.load(str(tmp_path / "ann" / "captions_val2017.json"), CAP, image_size=32, images=str(images))
    assert isinstance(s, sets.CaptionSet) and s.name == "captions_val2017"
    assert s.image_ids == [7, 9, 11]  # id 12 has no caption: dropped
    assert s.captions == [["cat"], ["A dog.", "a brown dog"], ["missing file"]]
    out, ok, errors = _decode_all(s)
    assert ok.tolist() == [True, True, False] and "FileNotFoundError" in errors[0]  # skipped when decoded
    # Without `images`, the files are looked for beside the JSON.
    assert sets.load(str(tmp_path / "ann" / "captions_val2017.json"), CAP, image_size=32).images.items[0] == str(
        tmp_path / "ann" / "000000000001.jpg")


def test_karpathy_split_file_filters_on_split_and_joins_filepath(tmp_path):
    def entry(i, split, **ids):
        return {"filepath": "val2014", "filename": f"im{i}.png", "split": split, **ids,
                "sentences": [{"raw": f"caption {i} a", "tokens": []}, {"raw": f"caption {i} b"}]}

    for i in range(5):
        _write(str(tmp_path / "coco" / "val2014" / f"im{i}.png"), _encode(_pixels(20 + i)))
    data = {"dataset": "coco", "images": [entry(0, "test", cocoid=100, imgid=0), entry(1, "val", cocoid=101),
                                          entry(2, "test", imgid=2), entry(3, "restval", cocoid=103),
                                          entry(4, "train", cocoid=104)]}
    data["images"].append({"filename": "im5.png", "split": "test", "sentences": []})  # no caption: dropped
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    root = str(tmp_path / "coco")
    s = sets.load(str(path), CAP, image_size=32, images=root)
    assert s.image_ids == [100, 2] and s.captions == [["caption 0 a", "caption 0 b"], ["caption 2 a", "caption 2 b"]]
    assert s.images.items == [os.path.join(root, "val2014", "im0.png"), os.path.join(root, "val2014", "im2.png")]
    out, ok, _ = _decode_all(s)
    assert ok.all()
    np.testing.assert_array_equal(out[1], _expected(_pixels(22)))
    assert sets.load(str(path), CAP, image_size=32, images=root, split="train").image_ids == [103, 104]
    assert sets.load(str(path), CAP, image_size=32, images=root, split="val").image_ids == [101]
    with pytest.raises(ValueError, match="no image of split 'testing' \\(the file has restval, test, train, val\\)"):
        sets.load(str(path), CAP, image_size=32, split="testing")
    with pytest.raises(ValueError, match="COCO captions .json.*needs a classification set"):
        sets.load(str(path), CLS, image_size=32)
    (tmp_path / "bad.json").write_text(json.dumps({"images": [{"file_name": "x.jpg"}]}))
    with pytest.raises(ValueError, match="neither 'annotations'"):
        sets.load(str(tmp_path / "bad.json"), CAP, image_size=32)


# ---------------------------------------------------------------------------------------------
# CLIP_benchmark webdataset


def _tar(path, samples):
    """samples: [(key, {ext: bytes})] written in CLIP_benchmark's order (image, then .cls / .txt)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _wds_classes(root, truncate: bool):
    """split test: 2.tar with 2 samples, 10.tar with 3 (natural order: 2 before 10); 10.tar cut in the
    middle of its third sample's image when `truncate`."""
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("apple\nbanana\ncherry\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na {c} on a table.\n")
    first = [("s0000000", {"webp": _encode(_pixels(30), "WEBP"), "cls": b"2"}),
             ("s0000001", {"png": _encode(_pixels(31)), "jpg": _encode(_pixels(99), "JPEG"), "cls": b"0\n"})]
    second = [("s0000002", {"png": _encode(_pixels(32)), "cls": b"1"}),
              ("s0000003", {"jpeg": _encode(_pixels(33), "JPEG"), "cls": b"1"}),
              ("s0000004", {"png": _encode(_pixels(34, (200, 200))), "cls": b"0"})]
    _tar(str(root / "test" / "2.tar"), first)
    _tar(str(root / "test" / "10.tar"), second)
    if truncate:
        data = (root / "test" / "10.tar").read_bytes()
        (root / "test" / "10.tar").write_bytes(data[:data.index(second[2][1]["png"]) + 5000])


def test_webdataset_classification_reads_classnames_templates_and_labels(tmp_path):
    root = tmp_path / "wds_fruit"
    _wds_classes(root, truncate=False)
    s = sets.load(f"wds:{root}", CLS, image_size=32)
    assert s.name == "wds_fruit" and s.classnames == ["apple", "banana", "cherry"]
    assert s.templates == ["a photo of a {c}.", "a {c} on a table."]
    assert s.labels.tolist() == [2, 0, 1, 1, 0]
    out, ok, _ = _decode_all(s)
    assert ok.all()
    # s0000001 has a .png and a .jpg: the .jpg is its image (the first of .webp .jpg .jpeg .png).
    np.testing.assert_array_equal(out[1], _expected(preprocess.decode_image(_encode(_pixels(99), "JPEG"))))
    np.testing.assert_array_equal(out[2], _expected(_pixels(32)))
    assert sets.load(str(root), CLS, image_size=32).labels.tolist() == [2, 0, 1, 1, 0]  # detected without wds:


def test_a_truncated_tar_keeps_the_samples_before_the_damage(tmp_path, caplog):
    root = tmp_path / "wds_fruit"
    _wds_classes(root, truncate=True)
    with caplog.at_level(logging.WARNING):
        s = sets.load(str(root), CLS, image_size=32)
    assert s.labels.tolist() == [2, 0, 1, 1]  # the 5th sample was cut off
    assert "1 truncated sample" in caplog.text and "10.tar: damaged" in caplog.text
    out, ok, _ = _decode_all(s)
    assert ok.all()
    np.testing.assert_array_equal(out[2], _expected(_pixels(32)))


def test_a_damaged_tar_header_keeps_the_samples_before_it(tmp_path, caplog):
    root = tmp_path / "wds_fruit"
    _wds_classes(root, truncate=False)
    shard = root / "test" / "2.tar"
    with tarfile.open(shard) as tar:
        second = [m.offset for m in tar.getmembers()][2]  # the header of s0000001's first member
    data = bytearray(shard.read_bytes())
    data[second:second + 512] = b"\x07" * 512
    shard.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        s = sets.load(str(root), CLS, image_size=32)
    assert s.labels.tolist() == [2, 1, 1, 0] and "2.tar: unreadable tar header" in caplog.text


def test_webdataset_captions_are_the_lines_of_txt(tmp_path):
    root = tmp_path / "wds_flickr"
    _tar(str(root / "test" / "0.tar"), [
        ("a/img0", {"jpg": _encode(_pixels(40), "JPEG"), "txt": b"a red car.\n\na car parked.\n"}),
        ("a/img1", {"png": _encode(_pixels(41)), "txt": b"two people"}),
        ("a/img2", {"png": _encode(_pixels(42))})])  # no caption: skipped
    s = sets.load(str(root), CAP, image_size=32)
    assert s.captions == [["a red car.", "a car parked."], ["two people"]] and s.image_ids == ["a/img0", "a/img1"]
    out, ok, _ = _decode_all(s)
    assert ok.all()
    np.testing.assert_array_equal(out[1], _expected(_pixels(41)))
    with pytest.raises(FileNotFoundError, match="CLIP_benchmark webdataset for classification"):
        sets.load(str(root), CLS, image_size=32)
    with pytest.raises(FileNotFoundError, match="no train/\\*.tar shards.*splits there: test"):
        sets.load(str(root), CAP, image_size=32, split="train")


# ---------------------------------------------------------------------------------------------
# TFDS


def test_tfds_without_tensorflow_datasets_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install -e '\.\[tfds\]'"):
        sets.load("tfds:imagenet2012", CLS, image_size=32, split="validation")


@pytest.mark.skipif(not HAVE_TFDS, reason="TFDS is optional (the [tfds] / [test] extras)")
def test_tfds_sets_read_labels_with_their_names_and_every_caption(tmp_path):
    import tensorflow_datasets as tfds

    class TinyLabelled(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=["cat", "dog"]), "index": np.int64,
                "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples()}

        def _generate_examples(self):
            for i in range(4):
                yield i, {"image": io.BytesIO(_encode(_pixels(50 + i))), "label": i % 2, "index": i,
                          "captions": {"text": [f"caption {i}", f"other {i}"]}}

    data_dir = str(tmp_path / "tfds")
    TinyLabelled(data_dir=data_dir, file_format="array_record").download_and_prepare()
    c = sets.load("tfds:tiny_labelled", CLS, image_size=32, data_dir=data_dir)
    t = sets.load("tfds:tiny_labelled", CAP, image_size=32, data_dir=data_dir)
    assert c.name == "tiny_labelled" and c.classnames == ["cat", "dog"] and len(c) == len(t) == 4
    out, ok, _ = _decode_all(c)
    assert ok.all()
    # TFDS shuffles the examples it writes: find each by its image.
    order = [next(k for k in range(4) if np.array_equal(out[i], _expected(_pixels(50 + k)))) for i in range(4)]
    assert sorted(order) == [0, 1, 2, 3] and c.labels.tolist() == [k % 2 for k in order]
    assert t.captions == [[f"caption {k}", f"other {k}"] for k in order] and t.image_ids == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no feature 'labels'"):
        sets.load("tfds:tiny_labelled", CLS, image_size=32, data_dir=data_dir, label_key="labels")
    with pytest.raises(ValueError, match="'index' exposes no label names: pass the option classnames"):
        sets.load("tfds:tiny_labelled", CLS, image_size=32, data_dir=data_dir, label_key="index")
    by_index = sets.load("tfds:tiny_labelled", CLS, image_size=32, data_dir=data_dir, label_key="index",
                         classnames=["zero", "one", "two", "three"])
    assert by_index.labels.tolist() == order and by_index.classnames[3] == "three"
    with pytest.raises(ValueError, match="'captions/text' is not an integer label"):
        sets.load("tfds:tiny_labelled", CLS, image_size=32, data_dir=data_dir, label_key="captions/text")
    with pytest.raises(FileNotFoundError, match="tfds build tiny_labelled --file_format=array_record"):
        sets.load("tfds:tiny_labelled", CLS, image_size=32, data_dir=str(tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------
# Our ArrayRecord shards


@pytest.fixture
def shards(tmp_path):
    """6 records over 2 shards (round robin), one of them garbage."""
    recs = [records.encode_record(f"k{i}", _encode(_pixels(60 + i)),
                                  {"caption": f"photo {i}", "re_caption": f"a detailed photo {i}",
                                   "label": ["zebra", "ant"][i % 2]}) for i in range(5)]
    recs.insert(3, b"garbage")
    return str(tmp_path / "recs"), records.write_shards(recs, str(tmp_path / "recs"), "eval", 2)


def test_array_record_captions_read_the_fields_and_images_lazily(shards, caplog):
    where, files = shards
    with caplog.at_level(logging.WARNING):
        s = sets.load(where, CAP, image_size=32, caption_field="caption,re_caption")
    assert "skipped 1 undecodable records" in caplog.text
    # Record order: shard 0 holds inputs 0, 2, 4 (k0, k2, k3); shard 1 holds 1, 3 (garbage), 5 (k4).
    assert s.image_ids == ["k0", "k2", "k3", "k1", "k4"]
    assert s.captions[0] == ["photo 0", "a detailed photo 0"] and len(s.captions[4]) == 2
    assert all(callable(item) for item in s.images.items)  # no image bytes held
    out, ok, _ = _decode_all(s)
    assert ok.all()
    for j, key in enumerate(s.image_ids):
        np.testing.assert_array_equal(out[j], _expected(_pixels(60 + int(key[1:]))))
    one = sets.load(files[1], CAP, image_size=32)  # one shard, the default field
    assert one.image_ids == ["k1", "k4"] and one.captions == [["photo 1"], ["photo 4"]]


def test_array_record_classification_names_classes_by_a_caption_field(shards):
    where, files = shards
    s = sets.load(os.path.join(where, "eval-*.array_record"), CLS, image_size=32, caption_field="label")
    assert s.classnames == ["ant", "zebra"] and s.templates == ["{c}"]
    assert s.labels.tolist() == [1, 1, 0, 0, 1]  # k0 zebra, k2 zebra, k3 ant, k1 ant, k4 zebra
    s = sets.load(where, CLS, image_size=32, caption_field="label", templates=["a photo of {a} {c}."])
    assert s.templates == ["a photo of {a} {c}."]
    with pytest.raises(ValueError, match="caption fields: caption, label, re_caption"):
        sets.load(where, CAP, image_size=32, caption_field="alt_text")
    with pytest.raises(ValueError, match="one field"):
        sets.load(where, CLS, image_size=32, caption_field="label,caption")


# ---------------------------------------------------------------------------------------------
# gs://


def test_an_image_folder_and_a_webdataset_on_gs_load(gcs_bucket, folder, tmp_path):
    paths.copy_tree(str(folder), f"{gcs_bucket}/pets")
    s = sets.load(f"{gcs_bucket}/pets", CLS, image_size=32)
    assert s.classnames == ["cat", "golden retriever"] and s.labels.tolist() == [0, 1, 1]
    assert s.images.items[0] == f"{gcs_bucket}/pets/cat/c.png"
    out, ok, _ = _decode_all(s)
    assert ok.all()
    np.testing.assert_array_equal(out[0], _expected(_pixels(3)))
    _wds_classes(tmp_path / "wds", truncate=True)
    paths.copy_tree(str(tmp_path / "wds"), f"{gcs_bucket}/wds")
    w = sets.load(f"wds:{gcs_bucket}/wds", CLS, image_size=32)
    assert w.labels.tolist() == [2, 0, 1, 1] and w.classnames == ["apple", "banana", "cherry"]
    out, ok, _ = _decode_all(w)
    assert ok.all()
    np.testing.assert_array_equal(out[2], _expected(_pixels(32)))


def test_detect_names_each_format(folder, shards, tmp_path):
    assert formats.detect(str(folder)) == ("imagefolder", str(folder))
    assert formats.detect(shards[0])[0] == "array_record" and formats.detect("tfds:coco_captions")[0] == "tfds"
    assert formats.detect("wds:/x") == ("webdataset", "/x")
