"""Scaling sweeps: `grid` (sweep files, named points, their trainer commands) and `results`
(point state from its workdir, the results table and the scaling plot). `tools/sweep.py` runs them."""
