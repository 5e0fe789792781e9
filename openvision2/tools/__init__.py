"""The commands besides train / caption / encode / export, installed as console scripts:
`openvision2-make-records` (image-text pairs to ArrayRecord shards), `openvision2-caption-metrics`
(CIDEr / BLEU / ROUGE-L of a COCO-format results file), `openvision2-sweep` (run,
resume or submit a sweep; report it), `openvision2-benchmark` (step time, MFU, memory; the input
pipeline) and `openvision2-aot-compile` (the sharded step compiled for a TPU topology, here).
`tools/<name>.py` in a checkout runs the same command."""
