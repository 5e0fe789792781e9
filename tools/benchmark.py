"""`python tools/benchmark.py ...` in a checkout runs the `openvision2-benchmark` command
(openvision2/tools/benchmark.py)."""

import runpy

runpy.run_module("openvision2.tools.benchmark", run_name="__main__", alter_sys=True)
