"""Sampling: one reply type and one sampler interface with its backends, pass rates, and self-repair."""
