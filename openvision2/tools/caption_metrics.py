r"""Score generated captions as the COCO caption toolkit does: BLEU-1..4, ROUGE-L, CIDEr (no Java needed).

  openvision2-caption-metrics --annotations=captions_val2014.json --results=results.json
  openvision2-caption-metrics --annotations=dataset_coco.json --split=test --results=results.json

--annotations is a COCO captions file ({"annotations": [{"image_id", "caption"}, ...]}) or a Karpathy
split file ({"images": [{"cocoid"|"imgid"|"id", "split", "sentences": [{"raw"}]}]}, with --split to pick
one split). --results is a JSON list [{"image_id": ..., "caption": ...}], one caption per image. As in
COCOEvalCap, only the images of the results file are scored; each must be in the annotations.

Prints one JSON line: {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "images"}. Captions
go through the toolkit's PTB tokenisation first (--no-tokenize for already tokenised captions). The
definitions are in openvision2/evals/coco_caption.py. Bad input exits with status 1 and a message
naming the problem.
"""

from __future__ import annotations

import argparse
import json
import sys

from openvision2.evals import coco_caption


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="openvision2-caption-metrics", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annotations", required=True, help="COCO captions json, or a Karpathy split json (with --split)")
    p.add_argument("--results", required=True, help="json list [{\"image_id\": ..., \"caption\": ...}]")
    p.add_argument("--split", help="Karpathy files: score only the images of this split (e.g. test)")
    p.add_argument("--no-tokenize", action="store_true", help="captions are already tokenised: skip PTB tokenisation")
    return p.parse_args(argv)


def evaluate(annotations: str, results: str, split: str | None = None, tokenize: bool = True) -> dict:
    """The metrics of a results file against an annotations file, plus the number of images scored."""
    references = coco_caption.load_coco_annotations(annotations, split=split)
    candidates = coco_caption.load_results(results)
    references = coco_caption.match_results(references, candidates)
    metrics = coco_caption.score(references, candidates, tokenize=tokenize)
    return {**metrics, "images": len(references)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        out = evaluate(args.annotations, args.results, split=args.split, tokenize=not args.no_tokenize)
    except ValueError as e:
        print(f"openvision2-caption-metrics: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


def run():
    """The `openvision2-caption-metrics` command."""
    sys.exit(main())


if __name__ == "__main__":
    run()
