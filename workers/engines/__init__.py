"""Engines: one per loaded model, each runs its batches on its own thread."""
