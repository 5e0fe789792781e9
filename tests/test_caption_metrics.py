"""COCO caption metrics (openvision2/evals/coco_caption.py) against the COCO caption toolkit itself
(pycocoevalcap 1.2): its pure-Python BLEU/ROUGE-L/CIDEr scorers on identical inputs, and its Java PTB
tokenizer (CoreNLP 3.4.1 jar, when `java` is installed) on a corpus of raw captions; plus the
openvision2-caption-metrics command end to end."""

import json
import os
import random
import shutil
import subprocess
import unicodedata

import pytest

from openvision2.evals import coco_caption
from openvision2.tools import caption_metrics

pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is in the test extra: pip install -e '.[test]'")
from pycocoevalcap.bleu.bleu import Bleu  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from pycocoevalcap.rouge.rouge import Rouge  # noqa: E402
from pycocoevalcap.tokenizer import ptbtokenizer  # noqa: E402

CORPUS = os.path.join(os.path.dirname(__file__), "data", "captions_ptb_corpus.txt")
JAR = os.path.join(os.path.dirname(ptbtokenizer.__file__), ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)


def _corpus() -> list[str]:
    with open(CORPUS, encoding="utf-8") as f:
        return f.read().splitlines()


def _need_java():
    if shutil.which("java") is None:
        pytest.skip("`java` is not on PATH: the comparison with the toolkit's PTB tokenizer jar needs a Java runtime")
    if not os.path.exists(JAR):
        pytest.skip(f"the toolkit's tokenizer jar is missing: {JAR}")


def _jar_tokenize(captions: list[str], tmp_path) -> list[str]:
    """pycocoevalcap's PTBTokenizer.tokenize on these captions, in this order: one file, one caption a line
    (newlines -> spaces), the same java command, the same punctuation filter."""
    path = tmp_path / "captions.txt"
    path.write_bytes("\n".join(c.replace("\n", " ") for c in captions).encode())
    cmd = ["java", "-cp", JAR, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", str(path)]
    lines = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True).stdout.decode()
    lines = lines.split("\n")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in ptbtokenizer.PUNCTUATIONS)
            for line in lines[:len(captions)]]


def _mismatches(captions, expected, got) -> str:
    rows = [f"  {c!r}\n    jar : {e!r}\n    ours: {g!r}" for c, e, g in zip(captions, expected, got) if e != g]
    return f"{len(rows)} of {len(captions)} captions differ:\n" + "\n".join(rows)


# --------------------------------------------------------------------------------------------------------------
# A realistic evaluation set: COCO-like scenes, 3-5 references each, and candidates of every kind.

_SCENES = [
    ("a man", "a guy", "a person"), ("a woman", "a lady", "a young woman"),
    ("two dogs", "a pair of dogs", "two puppies"),
    ("a little girl", "a young girl", "a small child"), ("a cat", "a kitten", "a gray cat"),
    ("a group of people", "several people", "a crowd"), ("an elephant", "a large elephant", "a baby elephant"),
    ("a giraffe", "a tall giraffe", "two giraffes"), ("a red bus", "a double decker bus", "a city bus"),
    ("a train", "a passenger train", "a freight train"), ("a surfer", "a man on a surfboard", "a surfer in a wetsuit"),
    ("a skateboarder", "a boy on a skateboard", "a teenager"), ("a pizza", "a large pizza", "a cheese pizza"),
    ("three zebras", "a herd of zebras", "some zebras"), ("a teddy bear", "a stuffed bear", "a brown teddy bear"),
]
_ACTIONS = ["sitting on", "standing next to", "walking down", "looking at", "laying on", "playing with",
            "parked in front of", "riding", "holding", "near"]
_PLACES = ["a wooden bench", "the beach", "a kitchen table", "a city street", "a grassy field", "a snowy hill",
           "a tall building", "the water", "a dirt road", "a brick wall", "the sidewalk", "a plate"]
_TAILS = ["", "", "", " in the park", " at night", " on a sunny day", " with a smile", " near the ocean",
          " in front of a house", " under a tree"]


def _caption(rng, scene, raw: bool) -> str:
    text = f"{rng.choice(scene)} {rng.choice(_ACTIONS)} {rng.choice(_PLACES)}{rng.choice(_TAILS)}"
    if raw:  # as people type them: capitals, punctuation, apostrophes, the odd quote or bracket
        text = text[0].upper() + text[1:]
        extras = [".", ".", "", " .", "!", "...", ", smiling.", " (outdoors).", "'s shadow.", ' "nice".']
        text += rng.choice(extras)
        if rng.random() < 0.2:
            text = text.replace(" a ", " A ", 1)
    return text


def _dataset(raw: bool) -> tuple[dict, dict]:
    rng = random.Random(1234 if raw else 99)
    refs, cands = {}, {}
    for i in range(44):
        scene = _SCENES[i % len(_SCENES)]
        refs[i] = [_caption(rng, scene, raw) for _ in range(rng.choice((3, 4, 5)))]
        cands[i] = _caption(rng, scene if rng.random() < 0.8 else rng.choice(_SCENES), raw)
    # Candidates of every kind.
    cands[0] = refs[0][1]  # identical to a reference
    cands[1] = ""  # empty
    cands[2] = "dog" if not raw else "Dog."  # one word
    cands[3] = "a a a a a a a" if not raw else "A a a a a a a!"  # repeated words
    cands[4] = "dog dog dog dog dog dog dog dog"
    cands[5] = " ".join(refs[5][0].split() * 3)  # long and repetitive
    cands[6] = "a" if not raw else "..."  # all punctuation when tokenised
    cands[7] = "the the"
    refs[8] = ["a man riding a horse on a beach", "a man on a brown horse", "a person rides a horse near the sea"]
    cands[8] = "a man riding a horse"
    # Closest reference length: the candidate (10 words) is as close to 9 as to 11 words: the shorter counts.
    refs[9] = ["a cat sitting on a wooden chair by the window",
               "a small cat sitting on a wooden chair near the big window"]
    cands[9] = "a cat sitting on a chair next to the big window"
    refs[10] = ["a bowl of fruit on a table"] * 3  # identical references
    cands[10] = "fruit in a bowl on the table"
    if raw:
        refs[11] = ["A sign that says \"STOP\".", "A red stop sign (on a pole).", "The stop sign isn't red!", "..."]
        cands[11] = "A STOP sign, on a pole."
        refs[12] = ["Mr. Smith's café in the U.S.", "A café — open 24/7 — on 5th Ave.", "A coffee shop; it's $5."]
        cands[12] = "A café on 5th Ave. in the U.S."
    return refs, cands


def _toolkit(refs: dict, cands: dict) -> dict:
    """pycocoevalcap's scorers on tokenised captions, as COCOEvalCap calls them."""
    gts, res = {k: list(v) for k, v in refs.items()}, {k: [cands[k]] for k in refs}
    (b1, b2, b3, b4), _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_per_image = Rouge().compute_score(gts, res)
    cider, cider_per_image = Cider().compute_score(gts, res)
    return {"BLEU-1": b1, "BLEU-2": b2, "BLEU-3": b3, "BLEU-4": b4, "ROUGE-L": rouge, "CIDEr": cider,
            "rouge_per_image": list(rouge_per_image), "cider_per_image": list(cider_per_image)}


def _assert_metrics_equal(ours: dict, theirs: dict):
    for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"):
        assert ours[name] == pytest.approx(float(theirs[name]), abs=1e-6, rel=0), name


def test_metrics_equal_the_toolkit_scorers_on_tokenised_captions():
    refs, cands = _dataset(raw=False)
    assert len(refs) >= 40 and all(3 <= len(v) <= 5 for k, v in refs.items() if k not in (8, 9, 10))
    theirs = _toolkit(refs, cands)
    ours = coco_caption.score(refs, cands, tokenize=False)
    _assert_metrics_equal(ours, theirs)
    assert set(ours) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"}
    assert all(isinstance(v, float) for v in ours.values())
    # Per image too, and the function forms.
    assert coco_caption.bleu(refs, cands) == pytest.approx([theirs[f"BLEU-{n}"] for n in range(1, 5)], abs=1e-9)
    rouge, rouge_per_image = coco_caption.rouge_l(refs, cands)
    assert list(rouge_per_image.values()) == pytest.approx(theirs["rouge_per_image"], abs=1e-9)
    cider, cider_per_image = coco_caption.cider(refs, cands)
    assert list(cider_per_image) == list(refs)
    assert list(cider_per_image.values()) == pytest.approx(theirs["cider_per_image"], abs=1e-9)
    # The special candidates score as they should: a copied reference high, empty and junk ones ~0.
    assert cider_per_image[0] > 1.0 and rouge_per_image[0] == pytest.approx(1.0)
    assert cider_per_image[1] == 0.0 and rouge_per_image[1] == 0.0
    assert cider_per_image[4] == 0.0
    assert 0.0 < ours["BLEU-4"] < ours["BLEU-3"] < ours["BLEU-2"] < ours["BLEU-1"] < 1.0


@pytest.mark.parametrize("case", ["one image", "all empty", "brevity", "short refs"])
def test_metrics_equal_the_toolkit_scorers_on_edge_cases(case):
    refs, cands = {
        "one image": ({"x": ["a dog runs on the grass", "a brown dog running"]}, {"x": "a dog running on grass"}),
        "all empty": ({1: ["a cat", "the cat sleeps"], 2: ["two birds"]}, {1: "", 2: ""}),
        "brevity": ({1: ["a man is riding a red bike down the long street today"], 2: ["two birds in a tree"]},
                    {1: "a man", 2: "birds"}),
        "short refs": ({1: ["dog", "a dog"], 2: ["cat"]}, {1: "a dog on a sofa", 2: "a black cat sleeping"}),
    }[case]
    _assert_metrics_equal(coco_caption.score(refs, cands, tokenize=False), _toolkit(refs, cands))


def test_score_with_tokenize_equals_the_toolkit_scorers_on_our_tokenisation():
    refs, cands = _dataset(raw=True)
    keys = list(refs)
    flat = coco_caption.ptb_tokenize_lines([c for k in keys for c in refs[k]])
    it = iter(flat)
    tok_refs = {k: [next(it) for _ in refs[k]] for k in keys}
    tok_cands = dict(zip(keys, coco_caption.ptb_tokenize_lines([cands[k] for k in keys])))
    assert tok_refs[11][0] == "a sign that says stop" and tok_refs[11][3] == "" and tok_cands[6] == ""
    ours = coco_caption.score(refs, cands, tokenize=True)
    _assert_metrics_equal(ours, _toolkit(tok_refs, tok_cands))
    assert ours != coco_caption.score(refs, cands, tokenize=False)


def test_score_with_tokenize_equals_the_full_toolkit_pipeline(tmp_path):
    """COCOEvalCap's own steps (the jar through pycocoevalcap's PTBTokenizer, then its scorers) give our numbers."""
    _need_java()
    if not os.access(os.path.dirname(ptbtokenizer.__file__), os.W_OK):
        pytest.skip("pycocoevalcap's PTBTokenizer writes its temporary file next to the jar, which is read-only here")
    refs, cands = _dataset(raw=True)
    tokenizer = ptbtokenizer.PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tokenizer.tokenize({k: [{"caption": cands[k]}] for k in refs})
    theirs = _toolkit(gts, {k: v[0] for k, v in res.items()})
    _assert_metrics_equal(coco_caption.score(refs, cands, tokenize=True), theirs)


def test_score_rejects_mismatched_ids_and_bad_captions():
    with pytest.raises(ValueError, match=r"no candidate for 1 reference image id\(s\): 3.*no references for 1 "
                                         r"candidate image id\(s\): 'x'"):
        coco_caption.score({1: ["a"], 3: ["b"]}, {1: "a", "x": "b"})
    with pytest.raises(ValueError, match="exactly one caption"):
        coco_caption.score({1: ["a dog"]}, {1: ["a dog", "a cat"]})
    with pytest.raises(ValueError, match="non-empty list"):
        coco_caption.score({1: []}, {1: "a dog"})
    with pytest.raises(ValueError, match="no images"):
        coco_caption.score({}, {})


# --------------------------------------------------------------------------------------------------------------
# PTB tokenisation.

PTB_EXAMPLES = [
    # clitics and contractions
    ("A man's dog isn't here.", "a man 's dog is n't here"),
    ("They're sure we'll go; I'd say I'm in, you've seen it.",
     "they 're sure we 'll go i 'd say i 'm in you 've seen it"),
    ("I cannot believe we're gonna win, wanna bet?", "i can not believe we 're gon na win wan na bet"),
    ("O'Neill's y'all at 4 o'clock, rock 'n' roll", "o'neill 's y' all at 4 o'clock rock 'n' roll"),
    ("Don’t ‘quote’ me", "do n't quote me"),
    # hyphens, slashes, brackets (lower-cased -LRB- etc. survive the filter), quotes
    ("A well-known, state-of-the-art café.", "a well-known state-of-the-art café"),
    ("The plate (white) has [a fork] and {a knife}.",
     "the plate -lrb- white -rrb- has -lsb- a fork -rsb- and -lcb- a knife -rcb-"),
    ('A sign that says "STOP" and ‘hi’ and “yo”.', "a sign that says stop and hi and yo"),
    # currency, numbers, times, dates, fractions
    ("It costs $5, or US$ 4.50, or £3, or €2, or 50¢.", "it costs $ 5 or us$ 4.50 or # 3 or $ 2 or 50 cents"),
    ("Over 1,000 people paid 3.5% at 3:30 on 12/25/2015.", "over 1,000 people paid 3.5 % at 3:30 on 12/25/2015"),
    ("Add 1 1/2 cups, or ½ cup.", "add 1\u00a01/2 cups or 1/2 cup"),
    # abbreviations and acronyms
    ("Mr. Smith of the U.S. Navy and Dr. Who", "mr. smith of the u.s. navy and dr. who"),
    ("He lives in the U.S.", "he lives in the u.s."),
    ("e.g. a dog, i.e. a pet", "e.g. a dog i.e. a pet"),
    ("Plan B.", "plan b."),
    # dashes, ellipses, repeated punctuation
    ("Wait... what … ok -- fine — yes – no", "wait what ok fine yes no"),
    ("WOW!! Really?!", "wow !! really ?!"),
    # symbols, emoticons, markup, URLs, addresses, tags
    ("Smile :) ^_^ <br> I <3 you", "smile :-rrb- ^_^ <br> i < 3 you"),
    ("See http://x.com/a?b=1 or mail me@mail.com #tag @user", "see http://x.com/a?b=1 or mail me@mail.com #tag @user"),
    ("C++ and C# at AT&T", "c++ and c# at at&t"),
    # non-ASCII text, spelling kept (no americanize), whitespace
    ("Naïve São Paulo façade, Straße, Москва, 東京, ΟΔΟΣ.", "naïve são paulo façade straße москва 東京 οδος"),
    ("A colour photo of the theatre", "a colour photo of the theatre"),
    ("A 😀 emoji on a sign", "a emoji on a sign"),
    ("TAB\tand   spaces\nand a newline", "tab and spaces and a newline"),
    ("", ""),
    ("?!.", "?!"),
    ("...", ""),
]


@pytest.mark.parametrize("caption,expected", PTB_EXAMPLES)
def test_ptb_tokenize_examples(caption, expected):
    assert coco_caption.ptb_tokenize(caption) == expected


def test_ptb_tokenize_lines_is_one_stream():
    # An acronym's period also ends the sentence when the next caption starts with "A ..." or "The ...".
    assert coco_caption.ptb_tokenize_lines(["Plan B.", "A dog."]) == ["plan b", "a dog"]
    assert coco_caption.ptb_tokenize_lines(["Plan B.", "dogs."]) == ["plan b.", "dogs"]
    assert coco_caption.ptb_tokenize_lines([]) == []
    # A line break other than "\n" inside a caption stays inside it (the jar would start a new line).
    assert coco_caption.ptb_tokenize_lines(["a\rb", "c\u2028d"]) == ["a b", "c d"]


def test_ptb_tokenize_matches_the_jar_on_the_corpus(tmp_path):
    _need_java()
    corpus = _corpus()
    assert len(corpus) >= 200
    expected = _jar_tokenize(corpus, tmp_path)
    got = coco_caption.ptb_tokenize_lines(corpus)
    assert got == expected, _mismatches(corpus, expected, got)
    # Each caption alone is the same, but where the jar looked into the next caption: a one-letter acronym at
    # the end ("B.") is "b" before a caption that starts with "A", "The" etc., else "b.".
    alone = [coco_caption.ptb_tokenize(c) for c in corpus]
    context = {corpus[i] for i in range(len(corpus)) if alone[i] != expected[i]}
    expected_context = {"A bottle labeled Vitamin C.", "They always have a plan B.", "Pick up at Gate #3, Terminal B."}
    assert context == expected_context, _mismatches(corpus, expected, alone)
    for i in range(len(corpus)):
        if corpus[i] in context:
            assert coco_caption.ptb_tokenize_lines(corpus[i:i + 2])[0] == expected[i]


def test_ptb_tokenize_matches_the_jar_on_every_bmp_character_and_random_text(tmp_path):
    """The Unicode classes (letters, digits, upper case, symbols) and the rules' edges, against the jar."""
    _need_java()
    chars = [chr(c) for c in range(0x20, 0x10000)
             if not 0xD800 <= c <= 0xDFFF and chr(c) not in "\r\u2028\u2029\x0b\x0c\x85"]
    lines = [f"{c}.b 1.{c}" for c in chars]  # letters (words with periods), digits (numbers with periods)
    lines += [f"x etc. {c}y" for c in chars  # upper case (a sentence-final abbreviation)
              if c.lower() != c.upper() or unicodedata.category(c) in ("So", "Nl")]
    rng = random.Random(0)
    alphabet = list("aAntsdlyUSme'’‘`.-_/@:;,()[]{}<>\"&#$%*+=!?^~|1209 ") + [
        "\u00a0", "é", "Σ", "\u00ad", "½", "…", "“", "”", "£", "€", "—", "\t", "😀", "İ", "www", "http://", ".com",
        "&amp;", "&quot;", "etc", "Inc", "co", "ltd", "No", "Mr", "U.S", "cannot", "gonna", "re", "ll", "n't", "tis",
        "90s", "c++", "Ph.D", "a.m", "e.g", "-LRB-", "AT&T", ":)", "^_^", "<br>", "(555) 555-1234", "1 1/2"]
    lines += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))).strip() for _ in range(3000)]
    expected = _jar_tokenize(lines, tmp_path)
    got = coco_caption.ptb_tokenize_lines(lines)
    assert got == expected, _mismatches(lines, expected, got)


# --------------------------------------------------------------------------------------------------------------
# Files and the command.

def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


def _coco_files(tmp_path, results):
    refs, _ = _dataset(raw=True)
    images = [{"id": 1000 + k, "file_name": f"{k}.jpg"} for k in refs]
    anns = [{"id": i, "image_id": 1000 + k, "caption": c} for i, (k, c) in
            enumerate((k, c) for k in refs for c in refs[k])]
    rng = random.Random(5)
    rng.shuffle(anns)  # annotations of an image need not be together
    ann_path = _write(tmp_path / "captions.json", {"info": {}, "images": images, "annotations": anns})
    return ann_path, _write(tmp_path / "results.json", results)


def test_command_prints_the_scores_of_the_results_images(tmp_path, capsys):
    refs, cands = _dataset(raw=True)
    scored = [k for k in refs if k % 3]  # results for a subset: only those images are scored
    results = [{"image_id": 1000 + k, "caption": cands[k]} for k in reversed(scored)]
    ann_path, res_path = _coco_files(tmp_path, results)
    assert caption_metrics.main([f"--annotations={ann_path}", f"--results={res_path}"]) == 0
    out = json.loads(capsys.readouterr().out.strip())
    references = coco_caption.match_results(coco_caption.load_coco_annotations(ann_path),
                                            coco_caption.load_results(res_path))
    assert list(references) == [1000 + k for k in scored]  # the annotation file's image order
    assert all(sorted(references[1000 + k]) == sorted(refs[k]) for k in scored)
    expected = coco_caption.score(references, {1000 + k: cands[k] for k in scored})
    assert out == {**expected, "images": len(scored)}


def test_command_rejects_a_result_for_an_unknown_image(tmp_path, capsys):
    ann_path, res_path = _coco_files(tmp_path, [{"image_id": 1000, "caption": "a man"},
                                                {"image_id": 77, "caption": "a dog"}])
    assert caption_metrics.main([f"--annotations={ann_path}", f"--results={res_path}"]) == 1
    err = capsys.readouterr()
    assert err.out == ""
    assert "1 result image id(s) are not in the annotations: 77" in err.err


def test_command_on_a_karpathy_split(tmp_path, capsys):
    images = [{"cocoid": 1, "split": "test", "sentences": [{"raw": "A dog on a couch."}, {"raw": "A brown dog."}]},
              {"cocoid": 2, "split": "train", "sentences": [{"raw": "A cat."}]},
              {"cocoid": 3, "split": "test", "sentences": [{"raw": "Two birds in a tree."}, {"raw": "Birds."}]}]
    ann_path = _write(tmp_path / "dataset_coco.json", {"images": images, "dataset": "coco"})
    res_path = _write(tmp_path / "res.json", [{"image_id": 3, "caption": "two birds"},
                                              {"image_id": 1, "caption": "a dog"}])
    assert caption_metrics.main([f"--annotations={ann_path}", f"--results={res_path}", "--split=test"]) == 0
    out = json.loads(capsys.readouterr().out)
    refs = {1: ["A dog on a couch.", "A brown dog."], 3: ["Two birds in a tree.", "Birds."]}
    assert out == {**coco_caption.score(refs, {1: "a dog", 3: "two birds"}), "images": 2}
    assert coco_caption.load_coco_annotations(ann_path) == {1: refs[1], 2: ["A cat."], 3: refs[3]}
    with pytest.raises(ValueError, match="no images with captions in split 'val'.*'test' \\(2 images\\)"):
        coco_caption.load_coco_annotations(ann_path, split="val")


@pytest.mark.parametrize("content,message", [
    ("not json", "is not valid UTF-8 JSON"),
    ([1, 2], "must hold a JSON object with an 'annotations' list"),
    ({"info": {}}, "neither an 'annotations' list"),
    ({"annotations": [{"image_id": 1}]}, r"annotations\[0\] must be an object with 'image_id' and 'caption'"),
    ({"annotations": [{"image_id": 1, "caption": 5}]}, r"annotations\[0\]\['caption'\] must be a string"),
    ({"images": [{"id": 1, "sentences": [{"tokens": ["a"]}]}]}, r"must be an object with a 'raw' string"),
])
def test_bad_annotation_files(tmp_path, content, message):
    path = tmp_path / "ann.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        coco_caption.load_coco_annotations(path)


@pytest.mark.parametrize("content,message", [
    ({"annotations": []}, "looks like an annotations file"),
    ([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}], "image_id 1 appears more than once"),
    ([{"image_id": 1, "caption": ["a"]}], "'caption' must be one string"),
    ([{"caption": "a"}], "entry 0 must be an object with 'image_id' and 'caption'"),
    ([], "holds no results"),
])
def test_bad_results_files(tmp_path, content, message):
    path = _write(tmp_path / "res.json", content)
    with pytest.raises(ValueError, match=message):
        coco_caption.load_results(path)


def test_ids_that_differ_only_in_type_get_a_hint():
    with pytest.raises(ValueError, match="differ only in type"):
        coco_caption.match_results({1: ["a dog"]}, {"1": "a dog"})
