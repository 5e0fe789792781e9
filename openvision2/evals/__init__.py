"""Evaluators: measuring a model during training and after it (`heldout`: what the recipe
trains, on the run's own eval set)."""
