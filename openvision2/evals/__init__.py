"""Evaluators: measuring a model during training and after it.

- `heldout`: what the recipe trains (caption loss, token accuracy, exact match, pair retrieval),
  on the run's own eval set (`data.eval_path`), every `eval_every` steps;
- the evaluators of `config.evals`, one module per type, found by `registry` and run by `suite`
  at their own cadence: `zeroshot`, `retrieval`, `linear_probe`, `captioning` (with the COCO
  caption metrics of `coco_caption`) and `perplexity`, over the eval sets of `sets` (built in)
  and `formats` (files users have); `scoring` holds the two ways of scoring images against texts.
"""
