"""Generative models and targets (generators for conditioning, networks for VI)."""
