"""Equinox building blocks shared by the deep generative models."""
