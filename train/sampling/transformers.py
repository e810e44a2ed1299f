"""Batched sampling from a transformers model, on whatever device the model sits on and in its dtype."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from tqdm.auto import tqdm

from train.core.data import to_messages
from train.core.modes import Mode, ThinkFormat, apply_mode
from train.sampling.params import SamplingParams
from train.sampling.reply import Reply

logger = logging.getLogger(__name__)


def build_prompts(
    tokenizer: Any,
    prompts: Sequence[Any],
    mode: Mode | str | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[str]:
    """Chat-formatted generation prompts; ``mode`` adds its tag (None keeps the prompt's own tags)."""
    out = []
    for p in prompts:
        messages = to_messages(p)
        if mode is not None:
            messages = apply_mode(messages, mode)
        out.append(
            tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
            )
        )
    return out


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block from ``seed`` (None: the global random state), leaving the caller's random state untouched.

    ``model.generate`` draws from the global generator (it takes no ``torch.Generator``), so the call forks it.
    """
    if seed is None:
        yield
        return
    accel = device.type != "cpu"
    devices = [device.index or 0] if accel else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if accel else "cuda"):
        torch.manual_seed(seed)
        yield


class TransformersSampler:
    """Batched ``model.generate`` on the model's device.

    Prompts are sorted by length (longest first, so an out-of-memory error shows at once) and batched
    ``batch_size`` at a time so a batch pads little; replies come back in the prompts' order. Greedy decoding
    computes one reply per prompt and repeats it ``n`` times. A ``seed`` makes a call reproducible.

    ``token_ids`` are always filled. ``logprobs`` (the log-probabilities of the sampled tokens under the
    distribution sampled from, after temperature and top-p) are filled only with ``logprobs=True``: they come from
    ``output_scores``, which holds a batch x steps x vocabulary tensor, so they are left None by default.
    ``chat_template_kwargs`` go to the chat template (``{"enable_thinking": False}``), ``generate_kwargs`` to
    ``model.generate`` (a logits processor, stopping criteria). ``think`` defaults to the tokenizer's format.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 64,
        progress: bool = False,
        *,
        think: ThinkFormat | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        logprobs: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.think = think or ThinkFormat.from_tokenizer(tokenizer)
        self.batch_size, self.progress = batch_size, progress
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.generate_kwargs = dict(generate_kwargs or {})
        self.logprobs = logprobs

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def sample(
        self, prompts: Sequence[Any], params: SamplingParams, mode: Mode | str | None = None
    ) -> list[list[Reply]]:
        """``params.n`` replies per prompt, in the prompts' order."""
        texts = build_prompts(self.tokenizer, prompts, mode, self.chat_template_kwargs)
        if not texts:
            return []
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        results: list[list[Reply]] = [[] for _ in texts]
        tok, model = self.tokenizer, self.model
        side, tok.padding_side = tok.padding_side, "left"  # decoder-only generation pads on the left
        was_training = model.training
        model.eval()
        try:
            with seeded(params.seed, self.device):
                starts = range(0, len(order), self.batch_size)
                for start in tqdm(starts, desc="sample", disable=not self.progress, leave=False):
                    batch = order[start : start + self.batch_size]
                    for i, replies in zip(batch, self._sample_batch([texts[i] for i in batch], params)):
                        results[i] = replies
        finally:
            model.train(was_training)
            tok.padding_side = side
        return results

    def _sampling_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        if params.greedy:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}

    def _sample_batch(self, texts: list[str], params: SamplingParams) -> list[list[Reply]]:
        """One ``model.generate`` call for a batch of chat-formatted prompts."""
        tok = self.tokenizer
        reps = 1 if params.greedy else params.n
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        out = self.model.generate(
            **enc,
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=reps,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            return_dict_in_generate=True,
            output_scores=self.logprobs,
            **self._sampling_kwargs(params),
            **self.generate_kwargs,
        )
        new = out.sequences[:, enc["input_ids"].shape[1] :]
        logps = _token_logprobs(out.scores, new).tolist() if self.logprobs else None
        replies = [self._reply(new[r].tolist(), None if logps is None else logps[r]) for r in range(new.shape[0])]
        return [replies[i * reps : (i + 1) * reps] * (params.n // reps) for i in range(len(texts))]

    def _reply(self, ids: list[int], logps: list[float] | None = None, repairs: int = 0) -> Reply:
        """The reply in ``ids``, cut after its EOS (kept and counted) or before trailing padding."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        n = len(ids)
        stopped = eos in ids
        if stopped:
            n = ids.index(eos) + 1
        else:
            while n and ids[n - 1] == pad and pad != eos:
                n -= 1
        return Reply(
            text=self.tokenizer.decode(ids[:n], skip_special_tokens=True),
            num_tokens=n,
            finish_reason="stop" if stopped else "length",
            token_ids=tuple(ids[:n]),
            logprobs=None if logps is None else tuple(logps[:n]),
            repairs=repairs,
        )


def _token_logprobs(scores: Sequence[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """``log p(token)`` at each step under the processed scores ``generate`` sampled from (rows x steps)."""
    steps = torch.stack(list(scores), dim=1).float().log_softmax(-1)  # rows x steps x vocab
    return steps.gather(-1, tokens[:, : steps.shape[1], None]).squeeze(-1)
