"""Backends: the engines' model protocols on a framework (transformers, sentence-transformers), or faked.

Each loads a checkpoint once, then runs plain batched forward passes (no queues, no threads).
"""
