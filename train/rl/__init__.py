"""Stage 1b, GRPO guided by MARS: the recipe's options, its prompt data, and the reward router's config."""
