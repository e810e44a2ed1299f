"""Evaluation: per-mode accuracy, tokens and compliance; benchmark loaders."""
