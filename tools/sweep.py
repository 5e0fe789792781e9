"""`python tools/sweep.py ...` in a checkout runs the `openvision2-sweep` command
(openvision2/tools/sweep.py)."""

import runpy

runpy.run_module("openvision2.tools.sweep", run_name="__main__", alter_sys=True)
