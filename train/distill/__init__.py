"""Stage 1a, iterative distillation: teacher data, model-aware selection, the iteration loop and its merges."""
