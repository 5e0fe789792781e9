"""`python tools/aot_compile.py ...` in a checkout runs the `openvision2-aot-compile` command
(openvision2/tools/aot_compile.py)."""

import runpy

runpy.run_module("openvision2.tools.aot_compile", run_name="__main__", alter_sys=True)
