"""Model wrappers: load a checkpoint once, then run plain batched forward passes (no queues, no threads)."""
