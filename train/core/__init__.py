"""Core: the think format and chat template, the record schema and IO, model loading, device and precision,
config bases and CLI helpers. Imports nothing else of the project."""
