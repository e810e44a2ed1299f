"""A rollout-actor generator that fails on purpose, for tests/test_rl_ssp.py's supervision tests.

Its own small module: a spawned actor child imports the module of its factory, and the test module is heavy.
"""

from __future__ import annotations

import os
import signal

from train.rl.ssp import Group


class CrashingGenerator:
    """Generates ``ok`` calls' worth of groups, then fails as ``how`` says."""

    def __init__(self, ok: int, how: str):
        self.ok, self.how, self.calls = ok, how, 0

    def load(self, state):
        pass

    def __call__(self, positions, version, call):
        self.calls += 1
        if self.calls > self.ok:
            if self.how == "raise":
                raise RuntimeError("actor boom")
            if self.how == "exit":
                os._exit(7)
            if self.how == "hang":
                os.kill(os.getpid(), signal.SIGSTOP)  # the whole process stops: no heartbeat
        return [Group(p, [1], [[2]], [[-0.5]], version, call=call) for p in positions]


def make_crashing(ok: int, how: str) -> CrashingGenerator:
    return CrashingGenerator(ok, how)
