"""Stage 2, the dual system: difficulty-aware fusion data, progressive phases, and the mode-choice RL."""
