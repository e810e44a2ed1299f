"""The arithmetic world and tiny models: the CPU stand-in that proves each stage in minutes."""
