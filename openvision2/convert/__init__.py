"""Checkpoint conversion: one name table per external format."""
