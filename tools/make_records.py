"""`python tools/make_records.py ...` in a checkout runs the `openvision2-make-records` command
(openvision2/tools/make_records.py)."""

import runpy

runpy.run_module("openvision2.tools.make_records", run_name="__main__", alter_sys=True)
