"""`python tools/caption_metrics.py ...` in a checkout runs the `openvision2-caption-metrics` command
(openvision2/tools/caption_metrics.py)."""

import runpy

runpy.run_module("openvision2.tools.caption_metrics", run_name="__main__", alter_sys=True)
