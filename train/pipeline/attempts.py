"""Wall time of a stage over all its attempts, killed ones included.

A stage that was killed and resumed cost the time of every attempt, but a SIGKILLed pipeline writes nothing when it
dies. So while a recipe runs, a heartbeat thread rewrites ``pipeline_attempt.json`` in the stage's folder every few
seconds with the attempt's elapsed time; the next attempt finds the file, counts that time (short by at most one
heartbeat) as an interrupted attempt, and the finished stage's manifest records every attempt's seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from train.core.fingerprint import write_json_atomic

ATTEMPT_FILE = "pipeline_attempt.json"


def interrupted_attempts(output_dir: Path) -> list[float]:
    """Seconds of the earlier attempts at this stage that did not finish (killed, or the recipe failed)."""
    path = output_dir / ATTEMPT_FILE
    if not path.exists():
        return []
    try:
        ledger = json.loads(path.read_text())
        return [float(s) for s in ledger["earlier"]] + [float(ledger["current"])]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an attempt ledger ({e}); delete it to count this stage's time afresh") from e


@contextmanager
def timed_attempt(output_dir: Path, every: float = 5.0) -> Iterator[list[float]]:
    """Time one attempt; yields the earlier (interrupted) attempts' seconds.

    On a clean exit the ledger is removed (the stage's manifest holds the times from then on); on an exception,
    or a kill, it stays with this attempt's time in it for the next attempt to count."""
    earlier = interrupted_attempts(output_dir)
    path, began, stop = output_dir / ATTEMPT_FILE, time.perf_counter(), threading.Event()

    def beat() -> None:
        write_json_atomic(path, {"earlier": earlier, "current": round(time.perf_counter() - began, 1)})

    def loop() -> None:
        while not stop.wait(every):
            beat()

    beat()
    thread = threading.Thread(target=loop, name="attempt-heartbeat", daemon=True)
    thread.start()
    try:
        yield list(earlier)
    finally:
        stop.set()
        thread.join()
        beat()  # the attempt's full time, for a failed attempt's successor
    path.unlink()
