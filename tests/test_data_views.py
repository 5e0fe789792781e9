"""What a batch carries beyond image + caption: the contrastive tower's text and region boxes."""

import io

import numpy as np
import pytest
from PIL import Image

from openvision2 import config as config_lib, recipes
from openvision2.data import pipeline, preprocess, records, tokenizer

SENTENCES = ["A red cube.", "It sits on a table.", "The light is warm."]


def _png(width, height, value):
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _cfg(path, objective, **data):
    cfg = config_lib.base_config(objective)
    cfg.seed = 3
    cfg.image_size = 16
    cfg.text.max_len = 12
    if "encoder_max_len" in cfg.text:  # the text-tower recipes
        cfg.text.encoder_max_len = 8
    cfg.data.update(path=path, caption_field="caption", augment="none", color_jitter=0.0, grayscale_prob=0.0,
                    prefetch=0, **data)
    return cfg


def data_and_stream(cfg):
    """The data block and the stream the config's recipe asks for (its views)."""
    return cfg.data, recipes.get(cfg.objective).stream(cfg)


@pytest.fixture(scope="module")
def bert():
    return tokenizer.get_tokenizer("bert_base_uncased")


@pytest.fixture(scope="module")
def region_dir(tmp_path_factory):
    """Record i: a 40x20 image with two regions, the left one half outside a centre crop."""
    recs = []
    for i in range(8):
        regions = [{"box": [0, 0, 20, 20], "caption": f"left {i}."}, {"box": [12, 2, 28, 18], "caption": f"mid {i}."}]
        recs.append(records.encode_record(f"r{i}", _png(40, 20, 10 * i), {"caption": " ".join(SENTENCES)},
                                          regions if i != 5 else None))
    d = tmp_path_factory.mktemp("regions")
    records.write_shards(recs, str(d), "data", 2)
    return str(d)


def test_contrastive_text_is_its_own_draw_from_the_same_record(region_dir, bert):
    cfg = _cfg(region_dir, "openvision", contrastive_caption_mode="random_sentence")
    loader = pipeline.train_loader(*data_and_stream(cfg), bert, global_batch=8, host_batch=8, host_offset=0)
    rows = [loader.example(g)[0] for g in range(24)]
    assert all(r["text"] == " ".join(SENTENCES) for r in rows)  # the decoder still reads it whole
    assert {r["text_con"] for r in rows} == set(SENTENCES)
    again = pipeline.train_loader(*data_and_stream(cfg), bert, global_batch=8, host_batch=8, host_offset=0)
    assert [again.example(g)[0]["text_con"] for g in range(24)] == [r["text_con"] for r in rows]
    batch = loader.map(0)
    assert batch["text_con"].shape == (8, 8) and batch["text"].shape == (8, 12)
    np.testing.assert_array_equal(batch["text_con"], bert.encode([r["text_con"] for r in rows[:8]], 8))
    # "same" hands the tower the decoder's caption.
    same = pipeline.train_loader(*data_and_stream(_cfg(region_dir, "clip", contrastive_caption_mode="same")), bert, global_batch=8,
                                 host_batch=8, host_offset=0)
    assert all(row["text_con"] == row["text"] for row in (same.example(g)[0] for g in range(8)))


def test_region_boxes_follow_the_image_through_the_eval_crop(region_dir, bert):
    crop = preprocess.eval_crop_box(20, 40, 16)  # 40x20 -> 32x16 -> the central 16x16: source x 10..30
    np.testing.assert_allclose(crop, (10, 0, 30, 20))
    boxes, visible = preprocess.map_boxes([[0, 0, 20, 20], [12, 2, 28, 18]], crop, 1)
    np.testing.assert_allclose(boxes, [[0, 0, 0.5, 1], [0.1, 0.1, 0.9, 0.9]])
    np.testing.assert_allclose(visible, [0.5, 1.0])
    cfg = _cfg(region_dir, "mmgem", eval_path=region_dir)
    cfg.mmgem.region_task = "both"
    cfg.mmgem.min_visible = 0.6  # the left region (half cut off) is not used
    batch = next(pipeline.eval_batches(*data_and_stream(cfg), bert, global_batch=8, host_batch=8, host_offset=0))
    keys = [records.decode_record(r)["key"] for r in _source(region_dir)]
    for row, key in enumerate(keys):
        if key == "r5":  # no regions: an invalid row, counted
            assert not batch["valid"][row] and batch["bad_records"][row] == 1
            continue
        np.testing.assert_allclose(batch["box"][row], [0.1, 0.1, 0.9, 0.9], atol=1e-6)
        assert bert.decode(batch["region_text"][row]) == f"mid {key[1:]}."


def test_a_train_record_without_usable_regions_is_replaced_and_counted(region_dir, bert):
    cfg = _cfg(region_dir, "mmgem")
    cfg.mmgem.region_task = "caption"
    loader = pipeline.train_loader(*data_and_stream(cfg), bert, global_batch=8, host_batch=8, host_offset=0)
    bad = 0
    for g in range(32):
        row, skipped = loader.example(g)
        bad += skipped
        box = row["box"]
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        assert row["region_text"].split()[0] in ("left", "mid")
    assert bad >= 2  # record r5 is drawn about 4 times in 32 elements and never used


def _source(path):
    import grain
    return grain.sources.ArrayRecordDataSource(records.resolve_paths(path))
