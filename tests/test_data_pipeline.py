"""Grain pipeline: the batch at a step is a pure function of the step.

Most tests use a tiny "numbered" set in which record i is a solid-colour image whose red
channel is 10*i and whose caption is "number i", so every row can be traced to its record.
"""

import io
import os
import pickle
import time

import grain
import ml_collections
import numpy as np
import pytest
from PIL import Image

from openvision2 import config as config_lib
from openvision2.data import pipeline, records, tokenizer

NUM = 24
SIZE = 16


def example(loader, g):
    """(image, caption, bad records skipped) of train element g."""
    row, bad = loader.example(g)
    return row["image"], row["text"], bad


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (value, 128, 64)).save(buf, format="PNG")
    return buf.getvalue()


def _numbered(i: int) -> bytes:
    return records.encode_record(f"n{i}", _png(10 * i), {"caption": f"number {i}"})


def _write(directory, recs) -> str:
    records.write_shards(recs, str(directory), "data", 3)
    return str(directory)


@pytest.fixture(scope="module")
def numbered_dir(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("numbered"), [_numbered(i) for i in range(NUM)])


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory):
    recs = [_numbered(i) for i in range(NUM)]
    recs[5] = b"\x00garbage that is not msgpack"
    recs[11] = records.encode_record("n11", b"not an image", {"caption": "number 11"})
    recs[17] = records.encode_record("n17", _png(170), {"alt_text": "number 17"})
    return _write(tmp_path_factory.mktemp("corrupt"), recs)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # The synthetic-shapes tests generate into the cache dir; keep it per test session.
    monkeypatch.setenv("OPENVISION2_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def bert():
    return tokenizer.get_tokenizer("bert_base_uncased")


def make_cfg(path="", **data):
    """The run-level data block (the pipeline's own config) and what a stream needs besides."""
    cfg = ml_collections.ConfigDict({"seed": 7, "image_size": SIZE, "text": {"max_len": 8},
                                     "data": config_lib.run_config().data.to_dict()})
    cfg.data.update({
        "path": path, "eval_path": "", "caption_field": "caption",
        "shapes": {"num_train": 30, "num_eval": 9, "seed": 0, "eval_seed": 1, "image_size": 32, "dir": ""},
        "augment": "inception_crop", "area_min": 0.4, "area_max": 1.0,
        "color_jitter": 0.4, "color_jitter_prob": 0.8, "grayscale_prob": 0.2,
        "workers": 0, "prefetch": 2, "num_eval": 0,
    })
    cfg.data.update(data)
    return cfg


def stream(cfg, views=pipeline.Views()):
    """What the trainer hands the pipeline besides the data block: no config, no recipe."""
    return pipeline.Stream(seed=cfg.seed, image_size=cfg.image_size, max_len=cfg.text.max_len, views=views)


def data_and_stream(cfg):
    return cfg.data, stream(cfg)


def take(cfg, tok, steps, *, start_step=0, global_batch=8, host_batch=None, host_offset=0):
    it = pipeline.train_batches(cfg.data, stream(cfg), tok, start_step=start_step, global_batch=global_batch,
                                host_batch=host_batch or global_batch, host_offset=host_offset)
    out = [next(it) for _ in range(steps)]
    it.close()
    return out


def concat_hosts(cfg, tok, steps, num_hosts, global_batch=8):
    per = global_batch // num_hosts
    hosts = [take(cfg, tok, steps, global_batch=global_batch, host_batch=per, host_offset=h * per)
             for h in range(num_hosts)]
    return [{k: np.concatenate([h[s][k] for h in hosts]) for k in hosts[0][s]} for s in range(steps)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def numbers(batch, tok):
    return [int(tok.decode(row).split()[1]) for row in batch["text"]]


def test_batch_layout_and_rows_match_their_records(numbered_dir, bert):
    cfg = make_cfg(numbered_dir, augment="none", color_jitter=0.0, grayscale_prob=0.0)
    (batch,) = take(cfg, bert, 1)
    assert batch["image"].shape == (8, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
    assert batch["text"].shape == (8, 8) and batch["text"].dtype == np.int32
    assert batch["bad_records"].tolist() == [0] * 8
    nums = numbers(batch, bert)
    np.testing.assert_array_equal(batch["text"], bert.encode([f"number {n}" for n in nums], 8))
    assert batch["image"][:, 0, 0, 0].tolist() == [10 * n for n in nums]


def test_global_batch_is_independent_of_the_host_split(numbered_dir, bert):
    cfg = make_cfg(numbered_dir)
    full = take(cfg, bert, 4)
    assert_same_batches(concat_hosts(cfg, bert, 4, 2), full)
    assert_same_batches(concat_hosts(cfg, bert, 4, 4), full)


def test_start_step_resumes_exactly(numbered_dir, bert):
    cfg = make_cfg(numbered_dir)
    assert_same_batches(take(cfg, bert, 3, start_step=4), take(cfg, bert, 7)[4:])


def test_each_epoch_is_a_new_permutation(numbered_dir, bert):
    cfg = make_cfg(numbered_dir, augment="none")
    batches = take(cfg, bert, 6)  # 2 epochs of 24 at global batch 8
    order = [n for b in batches for n in numbers(b, bert)]
    assert sorted(order[:NUM]) == sorted(order[NUM:]) == list(range(NUM))
    assert order[:NUM] != order[NUM:] and order[:NUM] != list(range(NUM))


def test_seed_alone_decides_order_and_augmentation(numbered_dir, bert):
    a = take(make_cfg(numbered_dir), bert, 1)[0]
    assert_same_batches([take(make_cfg(numbered_dir, prefetch=0), bert, 1)[0]], [a])
    cfg = make_cfg(numbered_dir)
    cfg.seed = 8
    b = take(cfg, bert, 1)[0]
    assert not np.array_equal(a["text"], b["text"])


def test_worker_processes_give_identical_batches(bert):
    # The synthetic shapes path, generated on first use into the cache dir set by the test.
    start = time.perf_counter()
    ref = take(make_cfg(workers=0), bert, 3)
    assert_same_batches(take(make_cfg(workers=2), bert, 3), ref)
    assert time.perf_counter() - start < 30


def test_corrupt_records_are_replaced_deterministically_and_counted(corrupt_dir, bert, caplog):
    cfg = make_cfg(corrupt_dir, augment="none", color_jitter=0.0, grayscale_prob=0.0)
    batches = take(cfg, bert, 3)  # one full epoch visits each bad record once
    bad = np.concatenate([b["bad_records"] for b in batches])
    assert bad.sum() >= 3 and (bad > 0).sum() == 3
    for b in batches:
        # Replacement rows are real, consistent examples.
        assert b["image"][:, 0, 0, 0].tolist() == [10 * n for n in numbers(b, bert)]
        assert not set(numbers(b, bert)) & {5, 11, 17}
    assert_same_batches(take(cfg, bert, 3), batches)
    assert_same_batches(concat_hosts(cfg, bert, 3, 4), batches)


def test_unreadable_dataset_fails_with_a_clear_error(tmp_path, bert):
    cfg = make_cfg(_write(tmp_path, [b"junk"] * 6), prefetch=0)
    with pytest.raises(RuntimeError, match="unreadable"):
        take(cfg, bert, 1)


def test_wrong_caption_field_fails_with_a_clear_error(numbered_dir, bert):
    with pytest.raises(RuntimeError, match="re_caption"):
        take(make_cfg(numbered_dir, caption_field="re_caption", prefetch=0), bert, 1)


def eval_list(cfg, tok, global_batch, host_batch=None, host_offset=0):
    return list(pipeline.eval_batches(cfg.data, stream(cfg), tok, global_batch=global_batch, host_batch=host_batch or global_batch,
                                      host_offset=host_offset))


def test_eval_reads_in_order_and_pads_the_last_batch(numbered_dir, bert):
    cfg = make_cfg(numbered_dir, eval_path=numbered_dir)
    batches = eval_list(cfg, bert, 10)
    assert len(batches) == 3
    source = [int(records.decode_record(r)["captions"]["caption"].split()[1])
              for r in grain.sources.ArrayRecordDataSource(records.resolve_paths(numbered_dir))]
    valid = np.concatenate([b["valid"] for b in batches])
    got = [n for b in batches for n in numbers(b, bert)]
    assert valid.tolist() == [True] * NUM + [False] * 6
    assert got[:NUM] == source and got[NUM:] == source[:6]
    # Eval is deterministic and unaugmented: the image is the stored one.
    assert batches[0]["image"][:, 0, 0, 0].tolist() == [10 * n for n in got[:10]]
    halves = [eval_list(cfg, bert, 10, 5, off) for off in (0, 5)]
    assert_same_batches([{k: np.concatenate([h[i][k] for h in halves]) for k in batches[i]} for i in range(3)],
                        batches)


def test_eval_limit_and_absence(numbered_dir, bert):
    limited = eval_list(make_cfg(numbered_dir, eval_path=numbered_dir, num_eval=7), bert, 4)
    assert [b["valid"].sum() for b in limited] == [4, 3]
    assert eval_list(make_cfg(numbered_dir), bert, 4) == []


def test_eval_marks_bad_records_invalid(corrupt_dir, bert):
    batches = eval_list(make_cfg(corrupt_dir, eval_path=corrupt_dir), bert, 8)
    valid = np.concatenate([b["valid"] for b in batches])
    bad = np.concatenate([b["bad_records"] for b in batches])
    assert bad.sum() == 3 and valid.sum() == NUM - 3 and not valid[bad > 0].any()


def test_shapes_default_has_disjoint_train_and_eval_splits(bert):
    info = pipeline.describe_sources(make_cfg().data)
    assert info["synthetic_shapes"]
    assert info["train"]["num_records"] == 30 and info["eval"]["num_records"] == 9
    assert os.path.dirname(info["train"]["paths"][0]) != os.path.dirname(info["eval"]["paths"][0])
    train_keys = {records.decode_record(r)["key"] for r in grain.sources.ArrayRecordDataSource(info["train"]["paths"])}
    eval_keys = {records.decode_record(r)["key"] for r in grain.sources.ArrayRecordDataSource(info["eval"]["paths"])}
    assert all(k.startswith("shapes-0-") for k in train_keys) and all(k.startswith("shapes-1-") for k in eval_keys)


# --- Several sources mixed by weight -------------------------------------------------------

OTHER = 12  # records of the second source; their captions are "number 100+i"


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory):
    recs = [records.encode_record(f"o{i}", _png(5 + i), {"caption": f"number {100 + i}"}) for i in range(OTHER)]
    return _write(tmp_path_factory.mktemp("other"), recs)


def test_parse_sources_normalises_and_rejects_malformed_specs():
    assert pipeline.parse_sources(" /d/a:3 , /d/b*.array_record:1 ") == [("/d/a", 0.75), ("/d/b*.array_record", 0.25)]
    assert pipeline.parse_sources("c:/x:2") == [("c:/x", 1.0)]  # split at the last colon
    for bad in ("/d/a", ":1", "/d/a:0", "/d/a:-1", "/d/a:nan", "/d/a:x", " , "):
        with pytest.raises(ValueError):
            pipeline.parse_sources(bad)


def test_sources_and_path_are_exclusive(numbered_dir, other_dir, bert):
    cfg = make_cfg(numbered_dir, sources=f"{other_dir}:1")
    with pytest.raises(ValueError, match="not both"):
        take(cfg, bert, 1)


def test_sources_mix_by_weight_and_read_each_source_through_its_own_shuffle(numbered_dir, other_dir, bert):
    plain = dict(augment="none", color_jitter=0.0, grayscale_prob=0.0, prefetch=0)
    cfg = make_cfg(sources=f"{numbered_dir}:3,{other_dir}:1", **plain)
    batches = take(cfg, bert, 10, global_batch=30)
    got = [n for b in batches for n in numbers(b, bert)]
    other = np.array([n >= 100 for n in got])
    assert abs(other.mean() - 0.25) < 0.08, other.mean()
    assert {n - 100 for n in got if n >= 100} <= set(range(OTHER))
    assert {n for n in got if n < 100} <= set(range(NUM))
    for b in batches:
        assert b["image"][:, 0, 0, 0].tolist() == [10 * n if n < 100 else 5 + n - 100 for n in numbers(b, bert)]
    # Source 0 at element g is record shuffled_0[g]: the very record the single-source stream has there.
    single = [n for b in take(make_cfg(numbered_dir, **plain), bert, 10, global_batch=30) for n in numbers(b, bert)]
    assert all(s == m for s, m in zip(single, got) if m < 100)
    # The choice per element is a pure function of (seed, g).
    loader = pipeline.train_loader(cfg.data, stream(cfg), bert, global_batch=30, host_batch=30, host_offset=0)
    assert [loader.source_index(g) for g in range(300)] == other.astype(int).tolist()
    info = pipeline.describe_sources(cfg.data)
    assert not info["synthetic_shapes"] and info["eval"] is None
    assert [(s["weight"], s["num_records"]) for s in info["train"]["sources"]] == [(0.75, NUM), (0.25, OTHER)]
    assert info["train"]["num_records"] == NUM + OTHER


def test_mixed_stream_is_independent_of_host_split_and_resumes_exactly(numbered_dir, other_dir, bert):
    cfg = make_cfg(sources=f"{numbered_dir}:1,{other_dir}:1")
    full = take(cfg, bert, 4)
    assert {n >= 100 for b in full for n in numbers(b, bert)} == {True, False}
    assert_same_batches(concat_hosts(cfg, bert, 4, 2), full)
    assert_same_batches(concat_hosts(cfg, bert, 4, 4), full)
    assert_same_batches(take(cfg, bert, 2, start_step=2), full[2:])
    loader = pipeline.train_loader(cfg.data, stream(cfg), bert, global_batch=8, host_batch=8, host_offset=0)
    assert_same_batches([pickle.loads(pickle.dumps(loader)).map(3)], full[3:])  # as a worker receives it


def test_bad_records_are_replaced_within_their_source(corrupt_dir, other_dir, bert):
    cfg = make_cfg(sources=f"{corrupt_dir}:1,{other_dir}:1", augment="none", color_jitter=0.0, grayscale_prob=0.0,
                   prefetch=0)
    loader = pipeline.train_loader(cfg.data, stream(cfg), bert, global_batch=8, host_batch=8, host_offset=0)
    replaced = 0
    for g in range(96):
        _, text, bad = example(loader, g)
        n = int(text.split()[1])
        assert n not in {5, 11, 17}
        assert (n >= 100) == (loader.source_index(g) == 1)
        replaced += bad > 0
    assert replaced > 0


# --- Caption modes ---------------------------------------------------------------------------

def _fields_for(i: int) -> dict[str, str]:
    if i == NUM - 1:
        return {"other": f"other {i}"}  # none of the listed fields: a bad record for random_field
    return [{"a": f"alpha {i}"}, {"a": f"alpha {i}", "b": f"beta {i}"}, {"a": f"alpha {i}", "b": " "},
            {"b": f"beta {i}"}][i % 4]


@pytest.fixture(scope="module")
def fields_dir(tmp_path_factory):
    recs = [records.encode_record(f"f{i}", _png(10 * i), _fields_for(i)) for i in range(NUM)]
    return _write(tmp_path_factory.mktemp("fields"), recs)


SENTENCES = ["A red box is here!", "Is it 3.5 cm wide?", "Yes, it is."]


@pytest.fixture(scope="module")
def sentence_dir(tmp_path_factory):
    recs = [records.encode_record(f"s{i}", _png(10 * i), {"caption": f"Photo {i}. " + "  ".join(SENTENCES),
                                                            "other": f"other {i}"})
            for i in range(NUM)]
    return _write(tmp_path_factory.mktemp("sentences"), recs)


def test_split_sentences_keeps_punctuation_and_drops_empty_pieces():
    assert pipeline.split_sentences("One. Two!  Three?four 3.5 x. ! ") == ["One.", "Two!", "Three?four 3.5 x."]
    assert pipeline.split_sentences('He said "hi." Then left') == ['He said "hi."', "Then left"]
    assert pipeline.split_sentences("  ") == []


def test_caption_picker_modes():
    rec = {"key": "k", "captions": {"a": "First one. Second one!", "b": "", "c": "see"}}
    rng = lambda s: np.random.default_rng(s)  # noqa: E731
    assert pipeline.CaptionPicker("field", ("a",))(rec) == "First one. Second one!"
    with pytest.raises(ValueError, match="no caption field 'z'"):
        pipeline.CaptionPicker("field", ("z",))(rec)
    pick = pipeline.CaptionPicker("random_field", ("a", "b", "c", "z"))
    assert {pick(rec, rng(s)) for s in range(40)} == {"First one. Second one!", "see"}  # b is blank, z absent
    assert all(pick(rec, rng([7, s])) == pick(rec, rng([7, s])) for s in range(10))
    with pytest.raises(ValueError, match="none of the caption fields"):
        pipeline.CaptionPicker("random_field", ("b", "z"))(rec, rng(0))
    sent = pipeline.CaptionPicker("random_sentence", ("a",))
    assert {sent(rec, rng(s)) for s in range(40)} == {"First one.", "Second one!"}
    assert sent({"key": "k", "captions": {"a": " ... "}}, rng(0)) == "..."  # no sentence: the text whole
    with pytest.raises(ValueError, match="caption_mode"):
        pipeline.CaptionPicker("sentence", ("a",))


def test_random_field_picks_among_present_fields_deterministically(fields_dir, bert):
    cfg = make_cfg(fields_dir, caption_field="a, b", caption_mode="random_field", augment="none",
                   color_jitter=0.0, grayscale_prob=0.0, prefetch=0)
    loader = pipeline.train_loader(cfg.data, stream(cfg), bert, global_batch=8, host_batch=8, host_offset=0)
    rows = [example(loader, g) for g in range(72)]  # 3 epochs
    used = set()
    for img, text, bad in rows:
        word, num = text.split()
        i = int(num)
        assert img[0, 0, 0] == 10 * i and i != NUM - 1  # the record without a or b was replaced
        fields = _fields_for(i)
        assert text == fields[{"alpha": "a", "beta": "b"}[word]] and text.strip()
        used.add((i % 4, word))
    assert sum(bad for *_, bad in rows) >= 3
    # Records with both fields get either; records with a blank b always get a.
    assert {("alpha", 1), ("beta", 1)} <= {(w, m) for m, w in used} and (2, "beta") not in used
    again = pickle.loads(pickle.dumps(loader))  # as a worker process receives it
    assert [example(again, g)[1] for g in range(72)] == [r[1] for r in rows]
    full = take(cfg, bert, 3)
    assert_same_batches(concat_hosts(cfg, bert, 3, 2), full)
    assert_same_batches(take(cfg, bert, 1, start_step=2), full[2:])
    assert [n for b in full for n in numbers(b, bert)] == [int(r[1].split()[1]) for r in rows[:24]]


def test_random_sentence_returns_a_sentence_of_the_caption_deterministically(sentence_dir, bert):
    cfg = make_cfg(sentence_dir, caption_mode="random_sentence", prefetch=0)
    loader = pipeline.train_loader(cfg.data, stream(cfg), bert, global_batch=8, host_batch=8, host_offset=0)
    texts = [example(loader, g)[1] for g in range(48)]
    photo = [t for t in texts if t.startswith("Photo ")]
    assert set(texts) - set(photo) == set(SENTENCES)
    assert photo and all(t == f"Photo {int(t[6:-1])}." for t in photo)
    again = pipeline.train_loader(cfg.data, stream(cfg), bert, global_batch=8, host_batch=8, host_offset=0)
    assert [example(again, g)[1] for g in range(48)] == texts
    # The caption draw does not disturb the order or the augmentation of the "field" mode.
    field = pipeline.train_loader(*data_and_stream(make_cfg(sentence_dir, prefetch=0)), bert, global_batch=8, host_batch=8,
                                  host_offset=0)
    for g in range(8):
        img, text, _ = example(field, g)
        np.testing.assert_array_equal(img, example(loader, g)[0])
        assert example(loader, g)[1] in pipeline.split_sentences(text)
    full = take(cfg, bert, 2)
    assert_same_batches(concat_hosts(cfg, bert, 2, 4), full)


@pytest.mark.parametrize("mode", ["random_field", "random_sentence"])
def test_eval_ignores_random_caption_modes(sentence_dir, bert, mode):
    ref = eval_list(make_cfg(sentence_dir, eval_path=sentence_dir), bert, 10)
    cfg = make_cfg(sentence_dir, eval_path=sentence_dir, caption_field="caption,other", caption_mode=mode)
    assert_same_batches(eval_list(cfg, bert, 10), ref)
    assert pipeline.describe_sources(cfg.data)["eval"]["caption_field"] == "caption"
