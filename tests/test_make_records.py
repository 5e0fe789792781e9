"""openvision2-make-records: every bad-input case is skipped and counted by reason, every valid record
round-trips exactly, output is deterministic across worker counts, and the shards train."""

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zlib

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from openvision2.data import pipeline, preprocess, records

from openvision2.tools import make_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIELDS = ("re_caption", "org_caption")
MAX_PIXELS = 3000  # lowered so a real 60x60 image counts as a decompression bomb


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(rng, w: int, h: int, mode: str = "RGB") -> Image.Image:
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return img if mode == "RGB" else img.convert(mode)


def _smooth(w: int, h: int, mode: str = "RGB") -> Image.Image:
    """Gradients: resizing and JPEG keep them close, unlike noise."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 255 // (w + h)], axis=-1)
    img = Image.fromarray(rgb.astype(np.uint8))
    if mode == "RGBA":
        img.putalpha(Image.fromarray((x * 255 // max(w - 1, 1)).astype(np.uint8)))
    return img


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (10 gigapixels) and no real data."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b""))
            + _png_chunk(b"IEND", b""))


def _write_tar(path, samples):
    """samples: [(key, {ext: bytes})]; members of a sample are written contiguously, as webdataset does."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def build_corpus(root):
    """Writes a mixed corpus with every bad case; returns (input dir, captions parquet,
    {key: (image bytes, captions)} of the records that must be written, in input order,
    expected skipped counts, number of input records)."""
    rng = np.random.default_rng(0)
    inp = root / "in"
    (inp / "imgs").mkdir(parents=True)
    expect = {}
    jpg = lambda w=24, h=20: _encode(_photo(rng, w, h), "JPEG", quality=90)  # noqa: E731
    png = lambda w=20, h=16: _encode(_photo(rng, w, h), "PNG")  # noqa: E731

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    pal = _photo(rng, 16, 12).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    rgba = _photo(rng, 18, 14, "RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (14, 18), dtype=np.uint8)))
    grey16 = Image.fromarray(rng.integers(0, 65536, (12, 14), dtype=np.uint16))
    good = {  # kept: these only need conversion at decode time
        "a009": _encode(_photo(rng, 20, 12, "L"), "JPEG"),
        "a010": _encode(_photo(rng, 20, 12, "CMYK"), "JPEG"),
        "a011": _encode(pal, "PNG", transparency=0),
        "a012": _encode(rgba, "PNG"),
        "a013": _encode(grey16, "PNG"),
        "a014": _encode(_photo(rng, 30, 10), "JPEG", exif=exif),
    }
    assert Image.open(io.BytesIO(good["a013"])).mode.startswith("I")
    truncated_jpg = jpg(40, 40)
    long_caption = "a very long caption " * 5000  # 100k characters
    a000, a001, a002, a019, a020, a023 = jpg(), png(), _encode(_photo(rng, 22, 18), "WEBP", lossless=True), jpg(), \
        jpg(), jpg()
    samples = [
        ("a000", {"jpg": a000, "json": json.dumps({"url": "http://x/a000"}).encode(), "txt": b"a red square"}),
        ("a001", {"png": a001, "json": json.dumps({"url": "http://x/u1"}).encode(), "txt": b"joined by url"}),
        ("a002", {"webp": a002, "txt": "caf\u00e9, no recaption".encode()}),
        ("a003", {"jpg": b"", "txt": b"zero-byte image"}),
        ("a004", {"jpg": truncated_jpg[: len(truncated_jpg) // 2], "txt": b"truncated image"}),
        ("a005", {"jpg": b"this is not an image at all\n" * 4, "txt": b"text file named .jpg"}),
        ("a006", {"png": _bomb_png(), "txt": b"bomb header"}),
        ("a007", {"png": png(60, 60), "txt": b"above the lowered max pixels"}),
        ("a008", {"png": png(4, 4), "txt": b"tiny"}),
        *[(k, {"jpg" if v[:2] == b"\xff\xd8" else "png": v, "txt": f"needs conversion {k}".encode()})
          for k, v in good.items()],
        ("a015", {"jpg": jpg()}),  # no caption anywhere
        ("a016", {"jpg": jpg(), "txt": b""}),
        ("a017", {"jpg": jpg(), "txt": b"  \n\t "}),
        ("a018", {"jpg": jpg(), "txt": b"\xff\xfe not utf-8"}),
        ("a019", {"jpg": a019, "txt": long_caption.encode()}),
        ("a020", {"jpg": a020}),  # no own caption, but a recaption by key
        ("a021", {"png": _encode(_photo(rng, 12, 12), "PPM"), "txt": b"ppm: a format outside --formats"}),
        ("a022", {"txt": b"caption without an image"}),
        ("a023", {"jpg": a023, "txt": b"\xc3\x28 invalid", "json": b"{not json"}),  # own caption dropped
    ]
    _write_tar(inp / "a.tar", samples)
    expect["a000"] = (a000, {"caption": "a red square", "re_caption": "RE a000", "org_caption": "ORG a000"})
    expect["a001"] = (a001, {"caption": "joined by url", "re_caption": "RE by url"})
    expect["a002"] = (a002, {"caption": "caf\u00e9, no recaption"})
    for k, v in good.items():
        expect[k] = (v, {"caption": f"needs conversion {k}"})
    expect["a019"] = (a019, {"caption": long_caption})
    expect["a020"] = (a020, {"re_caption": "RE a020 only"})
    expect["a023"] = (a023, {"re_caption": "RE a023"})

    # A tar cut in the middle of its third image: the first two samples survive.
    b = [(f"b{i:03d}", {"jpg": jpg(), "txt": f"tar b {i}".encode()}) for i in range(3)]
    _write_tar(inp / "b.tar", b)
    with tarfile.open(inp / "b.tar") as tf:
        third = tf.getmember("b002.jpg")
        cut = third.offset_data + third.size // 2
    (inp / "b.tar").write_bytes((inp / "b.tar").read_bytes()[:cut])
    for key, members in b[:2]:
        expect[key] = (members["jpg"], {"caption": members["txt"].decode()})

    (inp / "c.parquet").write_bytes(b"PAR1 this is not really parquet" * 10)  # unreadable
    (inp / "d.tar").write_bytes(b"")  # unreadable (empty)
    (inp / "notes.md").write_text("not an input format: ignored, not counted\n")

    # jsonl with relative and absolute image paths.
    j0, j1 = jpg(), png()
    (inp / "imgs" / "j0.jpg").write_bytes(j0)
    (inp / "imgs" / "j1.png").write_bytes(j1)
    abs_j1 = str(inp / "imgs" / "j1.png")
    lines = [
        json.dumps({"image": "imgs/j0.jpg", "caption": "jsonl relative", "key": "j0"}).encode(),
        json.dumps({"image": abs_j1, "caption": "jsonl absolute, no key"}).encode(),
        json.dumps({"image": "imgs/missing.jpg", "caption": "missing file", "key": "j2"}).encode(),
        b'{"image": "imgs/j0.jpg", "key": "j3", "caption": "caf\xe9 latin-1 bytes"}',
        b"{not json",
        b"",
        b"[1, 2]",
        json.dumps({"image": "imgs/j0.jpg", "key": "j4", "caption": "own", "re_caption": "own re"}).encode(),
        b'{"image": "imgs/j0.jpg", "key": "j5", "caption": "lone \\ud800 surrogate"}',
    ]
    (inp / "j.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    expect["j0"] = (j0, {"caption": "jsonl relative"})
    expect[abs_j1] = (j1, {"caption": "jsonl absolute, no key"})
    expect["j4"] = (j0, {"caption": "own", "re_caption": "own re"})

    # img2dataset-style parquet with jpg bytes.
    p0, p3, p5, bad_png = jpg(), jpg(), jpg(), png(30, 30)
    rows = [
        ("p000", "http://x/p0", p0, "parquet caption", "org p000"),
        ("p001", "http://x/p1", None, "no image bytes", None),
        ("a000", "http://x/dup", jpg(), "duplicate of a valid tar key", None),
        ("a003", "http://x/a3", p3, "the tar's a003 was invalid, this one is kept", None),
        ("p004", "http://x/p4", jpg(), None, None),
        ("p005", "http://x/p5", p5, "   ", "org only"),
        ("p006", "http://x/p6", bad_png[: len(bad_png) // 2], "truncated png", None),
    ]
    table = pa.table({"key": [r[0] for r in rows], "url": [r[1] for r in rows],
                      "jpg": pa.array([r[2] for r in rows], pa.binary()),
                      "caption": [r[3] for r in rows], "org_caption": [r[4] for r in rows]})
    pq.write_table(table, inp / "p.parquet", row_group_size=3)
    expect["p000"] = (p0, {"caption": "parquet caption", "org_caption": "org p000"})
    expect["a003"] = (p3, {"caption": "the tar's a003 was invalid, this one is kept"})
    expect["p005"] = (p5, {"org_caption": "org only"})

    recaps = root / "recaps.parquet"
    pq.write_table(pa.table({
        "key": ["a000", "zzz-other-key", "a020", "a023", "a018x"],
        "url": ["http://x/a000", "http://x/u1", None, None, None],
        "re_caption": ["RE a000", "RE by url", "RE a020 only", "RE a023", "unused"],
        "org_caption": ["ORG a000", None, None, None, None],
        "sha256": ["0" * 64] * 5,
    }), recaps)

    skipped = {"empty_image": 1, "corrupt_image": 2, "not_an_image": 1, "decompression_bomb": 2, "too_small": 1,
               "missing_caption": 4, "bad_caption_encoding": 3, "unsupported_format": 1, "missing_image": 3,
               "truncated_input": 1, "unreadable_input": 2, "duplicate_key": 1, "malformed_row": 2}
    seen = len(samples) + 3 + 1 + 1 + 8 + len(rows)
    return inp, recaps, expect, skipped, seen


def read_shards(paths):
    return [[raw for raw in grain.sources.ArrayRecordDataSource([p])] for p in paths]


def _run(inp, recaps, out, workers):
    return make_records.convert(f"{inp}/*", str(out), captions=str(recaps), caption_fields=FIELDS, workers=workers,
                                shards=3, image_options=make_records.ImageOptions(max_pixels=MAX_PIXELS),
                                progress=False)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    inp, recaps, expect, skipped, seen = build_corpus(root)
    out1, out2 = root / "out1", root / "out2"
    s1 = _run(inp, recaps, out1, workers=1)
    s2 = _run(inp, recaps, out2, workers=2)
    return dict(expect=expect, skipped=skipped, seen=seen, s1=s1, s2=s2, out1=out1, out2=out2, inp=inp)


def test_summary_accounts_for_every_input_record_by_reason(converted):
    s, expect = converted["s1"], converted["expect"]
    on_disk = json.loads((converted["out1"] / "summary.json").read_text())
    assert on_disk["written"] == s["written"] and on_disk["skipped"] == s["skipped"]
    assert s["skipped"] == converted["skipped"]
    assert s["written"] == len(expect)
    assert s["seen"] == converted["seen"] == s["written"] + sum(s["skipped"].values())
    assert s["shards"] == 3 and s["inputs"] == 6 and s["ignored_inputs"] == ["notes.md"]
    assert set(s["skipped"]) <= set(make_records.REASONS)
    assert s["dropped_captions"] == {"bad_caption_encoding": 1, "missing_caption": 1}  # a023's .txt, p005's caption
    # Joined before the image check and dedup: a000 (tar and its parquet duplicate), a020, a023; a001 by url.
    assert s["caption_join"]["by_key"] == 4 and s["caption_join"]["by_url"] == 1


def test_valid_records_round_trip_captions_and_pixels_exactly_in_input_order(converted):
    expect = converted["expect"]
    shards = read_shards(sorted(str(p) for p in converted["out1"].glob("*.array_record")))
    # Round-robin: record i is in shard i % 3, so interleaving restores the input order.
    ordered = [shards[i % 3][i // 3] for i in range(sum(map(len, shards)))]
    got = [records.decode_record(raw) for raw in ordered]
    assert [r["key"] for r in got] == list(expect)
    for rec in got:
        image, captions = expect[rec["key"]]
        assert rec["captions"] == captions
        assert rec["image"] == image  # stored as given: no re-encode without --max-side
        np.testing.assert_array_equal(preprocess.decode_image(rec["image"]), preprocess.decode_image(image))
    rotated = next(r for r in got if r["key"] == "a014")
    assert preprocess.decode_image(rotated["image"]).shape == (30, 10, 3)  # EXIF applied at decode
    assert len(next(r for r in got if r["key"] == "a019")["captions"]["caption"]) == 100_000


def test_output_trains_with_load_example(converted):
    for shard in read_shards(sorted(str(p) for p in converted["out1"].glob("*.array_record"))):
        for raw in shard:
            fields = records.decode_record(raw)["captions"]
            # Every record with its own caption loads under "caption"; recaption-only records
            # (a020, a023, p005) load under the field they carry.
            for field in ["caption"] if "caption" in fields else fields:
                image, text = pipeline.load_example(raw, field)
                assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and text.strip()


def test_same_bytes_whatever_the_worker_count(converted):
    assert converted["s1"]["skipped"] == converted["s2"]["skipped"]
    names1 = sorted(p.name for p in converted["out1"].glob("*.array_record"))
    names2 = sorted(p.name for p in converted["out2"].glob("*.array_record"))
    assert names1 == names2 == [f"records-0000{i}-of-00003.array_record" for i in range(3)]
    for name in names1:
        assert (converted["out1"] / name).read_bytes() == (converted["out2"] / name).read_bytes()
    assert not [p for p in os.listdir(converted["out2"]) if "tmp" in p]


def test_refuses_to_mix_with_existing_shards_unless_overwrite(converted, tmp_path):
    with pytest.raises(FileExistsError):
        make_records.convert(f"{converted['inp']}/j.jsonl", str(converted["out1"]), progress=False)


def test_cli_end_to_end_with_resize_and_records_per_shard(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    images = {"big": _encode(_smooth(40, 20), "JPEG", quality=95), "rot": _encode(_smooth(30, 12), "JPEG", exif=exif),
              "rgba": _encode(_smooth(24, 24, "RGBA"), "PNG"), "small": _encode(_photo(rng, 10, 12), "PNG")}
    lines = []
    for key, data in images.items():
        (tmp_path / "imgs" / f"{key}.img").write_bytes(data)
        lines.append(json.dumps({"image": f"imgs/{key}.img", "caption": f"cli {key}", "key": key}))
    lines.append(json.dumps({"image": "imgs/big.img", "caption": " \n", "key": "nocap"}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_records.py"), f"--input={tmp_path}/*.jsonl",
                    f"--output={out}", "--caption-field=re_caption", "--workers=2", "--records-per-shard=3",
                    "--max-side=16", "--no-progress"], check=True, cwd=ROOT, capture_output=True, text=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["written"] == 4 and summary["skipped"] == {"missing_caption": 1} and summary["shards"] == 2
    assert summary["reencoded"] == 3
    paths = records.resolve_paths(str(out))
    assert [os.path.basename(p) for p in paths] == [f"records-0000{i}-of-00002.array_record" for i in range(2)]
    got = {r["key"]: r for r in map(records.decode_record, [raw for s in read_shards(paths) for raw in s])}
    assert got["small"]["image"] == images["small"]  # already within --max-side: bytes as given
    for key in ("big", "rot", "rgba"):
        assert got[key]["captions"] == {"caption": f"cli {key}"}
        stored = preprocess.decode_image(got[key]["image"])
        original = preprocess.decode_image(images[key])  # upright, alpha on white
        scale = 16 / max(original.shape[:2])
        assert stored.shape[:2] == tuple(max(1, round(n * scale)) for n in original.shape[:2])  # aspect kept
        reference = np.asarray(Image.fromarray(original).resize(stored.shape[1::-1], Image.Resampling.LANCZOS))
        # JPEG 4:2:0 noise on steep 16-px gradients; a wrong rotation or alpha is far larger.
        assert np.abs(stored.astype(int) - reference.astype(int)).mean() < 8
    assert preprocess.decode_image(got["rot"]["image"]).shape[:2] == (16, 6)  # rotated before resizing


@pytest.mark.parametrize("where", ["inside_header", "at_member_boundary", "end_marker_only"])
def test_tar_cut_where_tarfile_reports_no_error_still_counts_as_truncated(tmp_path, where):
    path = tmp_path / "t.tar"
    _write_tar(path, [(f"k{i}", {"jpg": b"x" * 700, "txt": b"c"}) for i in range(2)])
    with tarfile.open(path) as tf:
        second = tf.getmember("k1.jpg")
        end = max(m.offset_data + m.size for m in tf.getmembers())
    raw = path.read_bytes()
    cut = {"inside_header": second.offset + 100, "at_member_boundary": second.offset,
           "end_marker_only": -(-end // 512) * 512}[where]
    path.write_bytes(raw[:cut])
    got = list(make_records.read_tar(str(path), 1 << 20))
    if where == "end_marker_only":  # every member intact, only the zero blocks are gone: still flagged
        assert [type(x).__name__ for x in got] == ["Item", "Item", "Skip"]
    else:
        assert [type(x).__name__ for x in got] == ["Item", "Skip"]
        assert got[0].key == "k0" and got[0].image == b"x" * 700 and got[0].captions == {"caption": b"c"}
    assert got[-1].reason == "truncated_input"


def test_the_trainer_runs_on_the_converted_mixed_corpus(converted, tmp_path):
    """`--config.data.path=<dir>` on converted junk-laden data: train, checkpoint, evaluate."""
    from openvision2 import train
    from tests.test_train import tiny_train_cfg

    cfg = tiny_train_cfg(tmp_path / "unused", total_steps=3)
    cfg.text.vocab = "bert_base_uncased"
    cfg.model.vocab_size = 32_000
    cfg.data.path = str(converted["out1"])
    cfg.data.eval_path = str(converted["out1"])
    cfg.data.caption_field = "re_caption,caption"
    cfg.data.caption_mode = "random_field"
    result = train.train(cfg, str(tmp_path / "run"))
    assert result["step"] == 3 and np.isfinite(result["train/loss"])
    assert result["eval/num_examples"] > 0
