"""The one reply type: what every sampler, the teacher and the judge hand back for one sampled reply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """One sampled reply.

    ``text`` has the special tokens removed and the think tags kept; ``num_tokens`` counts the reply's tokens (its
    EOS included when it stopped on one). ``token_ids`` and ``logprobs`` (the sampling log-probability of each of
    ``token_ids``) are filled by the backends that have them; ``repairs`` counts self-repair injections.
    """

    text: str
    num_tokens: int
    finish_reason: str = "stop"  # "stop" | "length"
    token_ids: tuple[int, ...] | None = None
    logprobs: tuple[float, ...] | None = None
    repairs: int = 0

    @property
    def truncated(self) -> bool:
        """Stopped by the token budget rather than by EOS."""
        return self.finish_reason == "length"

    def as_sample(self) -> dict[str, object]:
        """The reply as a teacher-file sample: ``{"text", "num_tokens", "truncated"}``."""
        return {"text": self.text, "num_tokens": self.num_tokens, "truncated": self.truncated}
