"""The tiny world's warm-up slice: drawn from the pool's rows of the configured levels, from the seed."""

import pytest

from train.pipeline.config import PipelineConfigError, WorldConfig
from train.pipeline.world import warmup_slice

POOL = [{"id": f"p{i}", "difficulty": float(1 + i % 3)} for i in range(30)]


def test_the_warmup_slice_draws_only_the_configured_levels():
    rows = warmup_slice(POOL, WorldConfig(warmup_examples=8, warmup_levels=[1, 2]), seed=0)
    assert len(rows) == 8 and {r["difficulty"] for r in rows} <= {1.0, 2.0}
    assert rows == warmup_slice(POOL, WorldConfig(warmup_examples=8, warmup_levels=[1, 2]), seed=0)
    everything = warmup_slice(POOL, WorldConfig(warmup_examples=100, warmup_levels=[3]), seed=0)
    assert len(everything) == 10  # all the level-3 rows there are, no more
    assert len(warmup_slice(POOL, WorldConfig(warmup_examples=30), seed=0)) == 30  # null: every level


def test_the_whole_pool_draw_is_the_one_before_the_key():
    import random

    assert warmup_slice(POOL, WorldConfig(warmup_examples=12), seed=3) == random.Random(3).sample(POOL, 12)


@pytest.mark.parametrize("levels", [[], [4], ["3"], [True]])
def test_warmup_levels_outside_the_world_are_refused(levels):
    with pytest.raises(PipelineConfigError, match=r"world.warmup_levels: expected some of the levels 1, 2, 3"):
        WorldConfig(warmup_levels=levels)
