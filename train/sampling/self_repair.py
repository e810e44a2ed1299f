"""Repetition self-repair at generation time: break a reasoning loop instead of burning the token budget on it.

A :class:`LoopStoppingCriteria` watches every reply while its think block is open and, every ``check_every``
tokens, runs the loop detector of the MARS repetition reward (:func:`train.sampling.loops.detect_loop`) on the
recent window of token ids. A looping row stops; the others go on. :class:`RepairingSampler` then repairs the
stopped rows and resumes them:

1. cut the repetition, keeping the first copy of the repeated block;
2. inject a control phrase inside the think block (``"\\nWait, I am going in circles. Let me move on.\\n"`` by
   default), and resume;
3. after ``max_repairs`` repairs, a further loop closes the think block instead (``close_phrase`` + think end),
   so the model must answer.

Replies that never loop are exactly what :class:`~train.sampling.transformers.TransformersSampler` returns for the
same arguments under greedy decoding (the criterion never fires). Each :class:`~train.sampling.reply.Reply` carries
the number of repairs applied to it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from train.core.modes import ThinkFormat
from train.sampling.loops import LoopInfo, detect_loop
from train.sampling.params import SamplingParams
from train.sampling.reply import Reply
from train.sampling.transformers import TransformersSampler

logger = logging.getLogger(__name__)


@dataclass
class RepairConfig:
    """When a loop counts, and what the repair says."""

    ngram: int = field(default=8, metadata={"help": "Shortest repeated block (in tokens) that counts as a loop."})
    min_repeats: int = field(default=3, metadata={"help": "Copies of the block at the end that make a loop."})
    window: int = field(default=256, metadata={"help": "Recent tokens searched for a loop."})
    check_every: int = field(default=4, metadata={"help": "Run the detector every this many new tokens."})
    max_repairs: int = field(default=2, metadata={"help": "Control phrases injected before the block is closed."})
    control_phrase: str = field(
        default="\nWait, I am going in circles. Let me move on.\n",
        metadata={"help": "Injected inside the think block after cutting a loop."},
    )
    close_phrase: str = field(
        default="\n", metadata={"help": "Written before the think end when repairs are used up."}
    )

    def __post_init__(self) -> None:
        if self.check_every < 1 or self.max_repairs < 0:
            raise ValueError(f"check_every={self.check_every} must be >= 1 and max_repairs={self.max_repairs} >= 0")
        detect_loop([], self.ngram, self.window, self.min_repeats)  # validates the detector's arguments


def _find(seq: Sequence[int], sub: Sequence[int], start: int = 0) -> int:
    """Index of the first occurrence of ``sub`` in ``seq`` at or after ``start``, or -1."""
    n = len(sub)
    for i in range(start, len(seq) - n + 1):
        if list(seq[i : i + n]) == list(sub):
            return i
    return -1


def think_region(reply: Sequence[int], think_start: Sequence[int], think_end: Sequence[int], open_: bool) -> int:
    """Where the open think block's content starts in ``reply``, or -1 when no block is open.

    ``open_`` says whether the prompt itself left a block open (a prefilled ``<think>``).
    """
    if _find(reply, think_end) != -1:
        return -1
    if open_:
        return 0
    i = _find(reply, think_start)
    return -1 if i == -1 else i + len(think_start)


class LoopStoppingCriteria(StoppingCriteria):
    """Stops the rows whose open think block ends in a loop (checked every ``check_every`` steps).

    ``reply_starts[i]`` is where row ``i``'s reply begins in the (left-padded) batch; ``open_blocks[i]`` whether
    its prompt left a think block open. ``stopped`` collects the rows stopped for a loop.
    """

    def __init__(
        self,
        config: RepairConfig,
        reply_starts: Sequence[int],
        open_blocks: Sequence[bool],
        think_start_ids: Sequence[int],
        think_end_ids: Sequence[int],
        watch: Sequence[bool] | None = None,
    ) -> None:
        self.config = config
        self.reply_starts = list(reply_starts)
        self.open_blocks = list(open_blocks)
        self.think_start_ids = list(think_start_ids)
        self.think_end_ids = list(think_end_ids)
        self.watch = list(watch) if watch is not None else [True] * len(self.reply_starts)
        self.stopped: set[int] = set()
        self._calls = 0

    def loop_in(self, reply: Sequence[int], open_: bool) -> tuple[int, LoopInfo] | None:
        """``(think content start, loop)`` when the open think block of ``reply`` ends in a loop."""
        begin = think_region(reply, self.think_start_ids, self.think_end_ids, open_)
        if begin == -1:
            return None
        c = self.config
        loop = detect_loop(list(reply[begin:]), ngram=c.ngram, window=c.window, min_repeats=c.min_repeats)
        return None if loop is None else (begin, loop)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        self._calls += 1
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self._calls % self.config.check_every:
            return done
        for row in range(input_ids.shape[0]):
            if not self.watch[row]:
                continue
            reply = input_ids[row, self.reply_starts[row] :].tolist()
            if self.loop_in(reply, self.open_blocks[row]) is not None:
                done[row] = True
                self.stopped.add(row)
        return done


@dataclass
class _Row:
    prompt: list[int]
    open_block: bool
    reply: list[int] = field(default_factory=list)
    repairs: int = 0
    closed: bool = False  # repairs used up and the block closed: stop watching
    done: bool = False
    stopped_by_eos: bool = False


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class RepairingSampler(TransformersSampler):
    """A :class:`TransformersSampler` that cuts and repairs loops in the think block (see the module doc).

    ``max_new_tokens`` bounds each reply's final length (injected phrases included). Replies carry ``repairs``;
    their ``logprobs`` are None (a repaired reply is not what the model sampled).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 64,
        progress: bool = False,
        *,
        repair: RepairConfig | None = None,
        think: ThinkFormat | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            model,
            tokenizer,
            batch_size,
            progress,
            think=think,
            chat_template_kwargs=chat_template_kwargs,
            generate_kwargs=generate_kwargs,
        )
        self.repair = repair or RepairConfig()
        self.ts_ids, self.te_ids = _ids(tokenizer, self.think.start), _ids(tokenizer, self.think.end)
        self.control = _ids(tokenizer, self.repair.control_phrase)
        self.close = _ids(tokenizer, self.repair.close_phrase + self.think.end + "\n\n")

    def _sample_batch(self, texts: list[str], params: SamplingParams) -> list[list[Reply]]:
        reps = 1 if params.greedy else params.n
        rows = []
        for text in texts:
            ids = _ids(self.tokenizer, text)
            open_ = _open_at_end(ids, self.ts_ids, self.te_ids)
            rows += [_Row(list(ids), open_) for _ in range(reps)]
        while not all(r.done for r in rows):
            self._resume(rows, params)
        replies = [self._finish(r) for r in rows]
        return [replies[i * reps : (i + 1) * reps] * (params.n // reps) for i in range(len(texts))]

    def _finish(self, r: _Row) -> Reply:
        """The finished row as a reply (its EOS, when it stopped on one, is kept and counted)."""
        return Reply(
            text=self.tokenizer.decode(r.reply, skip_special_tokens=True),
            num_tokens=len(r.reply),
            finish_reason="stop" if r.stopped_by_eos else "length",
            token_ids=tuple(r.reply),
            repairs=r.repairs,
        )

    def _resume(self, rows: list[_Row], params: SamplingParams) -> None:
        """One generation round for the unfinished rows, then the repairs of the rows stopped for a loop."""
        tok, config = self.tokenizer, self.repair
        eos, pad = tok.eos_token_id, tok.pad_token_id
        active = [r for r in rows if not r.done]
        seqs = [r.prompt + r.reply for r in active]
        width = max(map(len, seqs))
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        budget = max(params.max_new_tokens - len(r.reply) for r in active)
        starts = [width - len(s) + len(r.prompt) for s, r in zip(seqs, active)]
        watch = [not r.closed for r in active]
        opened = [r.open_block for r in active]
        criterion = LoopStoppingCriteria(config, starts, opened, self.ts_ids, self.te_ids, watch=watch)
        extra = dict(self.generate_kwargs)
        criteria = StoppingCriteriaList([criterion, *extra.pop("stopping_criteria", [])])
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=budget,
            pad_token_id=pad,
            eos_token_id=eos,
            stopping_criteria=criteria,
            **self._sampling_kwargs(params),
            **extra,
        )
        new = out[:, width:].tolist()
        for i, r in enumerate(active):
            stopped = i in criterion.stopped
            _absorb(r, new[i], stopped, criterion, config, self.control, self.close, eos, pad, params.max_new_tokens)


def _open_at_end(prompt: list[int], ts_ids: list[int], te_ids: list[int]) -> bool:
    """Whether the prompt ends inside a think block (the template prefilled the opening tag)."""
    last_start, i = -1, _find(prompt, ts_ids)
    while i != -1:
        last_start, i = i, _find(prompt, ts_ids, i + 1)
    if last_start == -1:
        return False
    return _find(prompt, te_ids, last_start) == -1 and len(prompt) - last_start < 64


def _absorb(
    r: _Row,
    new: list[int],
    stopped_for_loop: bool,
    criterion: LoopStoppingCriteria,
    config: RepairConfig,
    control: list[int],
    close: list[int],
    eos: int,
    pad: int,
    max_new_tokens: int,
) -> None:
    if eos in new:
        r.reply += new[: new.index(eos) + 1]
        r.done = r.stopped_by_eos = True
        return
    while new and new[-1] == pad and pad != eos:
        new.pop()
    r.reply += new
    found = criterion.loop_in(r.reply, r.open_block) if stopped_for_loop else None
    if found is None:
        # Out of budget (or stopped by a caller's criterion): the reply is final.
        r.reply = r.reply[:max_new_tokens]
        r.done = True
        return
    begin, loop = found
    keep = begin + loop.start + loop.period * -(-config.ngram // loop.period)  # one copy of the repeated block
    r.reply = r.reply[:keep]
    if r.repairs < config.max_repairs:
        r.reply += control
    else:
        r.reply += close
        r.closed = True
    r.repairs += 1
    logger.debug("repaired a loop of period %d (repair %d)", loop.period, r.repairs)
    if len(r.reply) >= max_new_tokens:
        r.reply = r.reply[:max_new_tokens]
        r.done = True
