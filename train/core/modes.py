"""Fast/slow chat modes: the chat template, mode tags, and response parsing.

One set of weights answers in three modes, asked for by a tag in the last user turn or in the system prompt:

* ``/think`` (slow, also the default): reason inside a think block, then answer;
* ``/no_think`` (fast): an empty think block, then the answer;
* ``/auto_think`` (automatic): the model decides which of the two to use.

The template renders exactly what Qwen3's renders (``<think>...</think>``; ``enable_thinking=False`` prefills an
empty block; tools and tool calls; think blocks of earlier turns dropped) and carries ``{% generation %}`` markers so
trl's ``assistant_only_loss`` can mask everything but the replies. The delimiters are a :class:`ThinkFormat`, one
per run: Qwen3's ``<think>``/``</think>`` or openPangu-Embedded's ``[unused16]``/``[unused17]``. They are added as
*ordinary* tokens, because trl decodes completions with ``skip_special_tokens=True`` and special think tokens
would vanish before a reward sees them.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThinkFormat:
    """The think-block delimiters of one model: ``<think>``/``</think>`` (Qwen3) or ``[unused16]``/``[unused17]``.

    There is one per run. It is resolved once from the tokenizer (:meth:`from_tokenizer`; a config may override it,
    and :func:`train.core.loading.load_tokenizer` writes the override into the tokenizer) and passed to everything
    that writes or reads a reply. No function defaults it: a reply parsed with another model's tags is silently
    wrong, so a missing format is an error, never a guess.
    """

    start: str
    end: str

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if not isinstance(value, str) or not value or '"' in value or "\\" in value:
                raise ValueError(f"think {name}={value!r} must be a non-empty string without quotes or backslashes")
        if self.start == self.end:
            raise ValueError(f"think start and end must differ, both are {self.start!r}")

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ThinkFormat:
        """The format recorded on a tokenizer by :func:`install_chat_template`; an error when it has none."""
        kw = getattr(tokenizer, "init_kwargs", None) or {}
        if not kw.get("think_start") or not kw.get("think_end"):
            raise ValueError(
                "this tokenizer records no think delimiters: load it with train.core.loading.load_tokenizer (or call "
                "install_chat_template) so that the run has one think format"
            )
        return cls(kw["think_start"], kw["think_end"])

    def parse(self, text: Any) -> ParsedResponse:
        """:func:`parse_response` with these delimiters."""
        return parse_response(text, self)

    def format(self, answer: str, thinking: str = "") -> str:
        """:func:`format_response` with these delimiters."""
        return format_response(answer, thinking, self)

    def rewrite(self, text: str, source: ThinkFormat) -> str:
        """``text`` written with ``source``'s delimiters, rewritten into these (a teacher's reply for this student)."""
        if source == self:
            return text
        return text.replace(source.start, self.start).replace(source.end, self.end)


#: Qwen3's delimiters (and DeepSeek-R1's): the format of a tokenizer that has ``<think>`` in its vocabulary.
QWEN3_THINK = ThinkFormat("<think>", "</think>")
#: openPangu-Embedded's delimiters.
PANGU_THINK = ThinkFormat("[unused16]", "[unused17]")
#: The formats by name, for command-line options (``--think-format qwen3``).
THINK_FORMATS = {"qwen3": QWEN3_THINK, "pangu": PANGU_THINK}


class Mode(str, enum.Enum):
    """A thinking mode, with the tag that asks for it."""

    SLOW = "slow"
    FAST = "fast"
    AUTO = "auto"

    @property
    def tag(self) -> str:
        return MODE_TAGS[self]

    @classmethod
    def parse(cls, value: str | Mode) -> Mode:
        """Accept a mode name (`slow`), a tag (`/think`) or a bare tag name (`think`)."""
        if isinstance(value, Mode):
            return value
        text = str(value).strip().lower()
        for mode, tag in MODE_TAGS.items():
            if text in (mode.value, tag, tag.lstrip("/")):
                return mode
        raise ValueError(f"unknown mode {value!r}; expected one of {[m.value for m in Mode]} or a tag {TAGS}")


MODE_TAGS = {Mode.SLOW: "/think", Mode.FAST: "/no_think", Mode.AUTO: "/auto_think"}
TAGS = tuple(MODE_TAGS.values())
# Longest first, so "/no_think" is never read as "/think" and "/auto_think" never as "/think".
# A tag is a word of its own: "</think>" (a delimiter) and "a/no_think" are not tags.
_TAG_RE = re.compile(r"(?<![\w/<])(/auto_think|/no_think|/think)(?![\w>])")


def _content_text(content: Any) -> str:
    """Text of a message content that may be a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def find_tag(text: str) -> Mode | None:
    """The mode asked for by the last tag in ``text``, or None."""
    tags = _TAG_RE.findall(text)
    return Mode.parse(tags[-1]) if tags else None


def detect_mode(messages: list[dict[str, Any]] | str, default: Mode = Mode.SLOW) -> Mode:
    """The mode a conversation asks for.

    The last user turn wins over the system prompt; with no tag anywhere the mode is ``default`` (slow, as in
    openPangu-Embedded and Qwen3).
    """
    if isinstance(messages, str):
        return find_tag(messages) or default
    users = [m for m in messages if m.get("role") == "user"]
    if users:
        mode = find_tag(_content_text(users[-1].get("content")))
        if mode is not None:
            return mode
    systems = [m for m in messages if m.get("role") == "system"]
    if systems:
        mode = find_tag(_content_text(systems[0].get("content")))
        if mode is not None:
            return mode
    return default


def strip_tags(text: str) -> str:
    """``text`` without mode tags (and without the space a tag leaves behind)."""
    return re.sub(r"[ \t]*" + _TAG_RE.pattern, "", text).strip()


def apply_mode(messages: list[dict[str, Any]] | str, mode: Mode | str | None) -> list[dict[str, Any]]:
    """A copy of the conversation asking for ``mode``.

    Existing tags are removed from the last user turn and the system prompt, then the mode's tag is appended to
    the last user turn. ``mode=None`` removes tags without adding one (the model's default, slow). A plain
    string is taken as a single user turn.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    out = [dict(m) for m in messages]
    user_idx = [i for i, m in enumerate(out) if m.get("role") == "user"]
    if not user_idx:
        raise ValueError("apply_mode needs a conversation with at least one user turn")
    for i, m in enumerate(out):
        if m.get("role") == "system" or i == user_idx[-1]:
            m["content"] = strip_tags(_content_text(m.get("content")))
    if mode is not None:
        last = out[user_idx[-1]]
        last["content"] = f"{last['content']} {Mode.parse(mode).tag}".strip()
    return out


def tagged(prompt: Any, mode: Mode | str | None) -> Any:
    """``prompt`` asking for ``mode`` (None: no tag), in the prompt's own shape: a string stays a string."""
    messages = apply_mode(prompt, mode)
    return messages[-1]["content"] if isinstance(prompt, str) else messages


def untagged(prompt: Any) -> Any:
    """``prompt`` without its mode tag, in its own shape: the same problem asked in any mode gives the same value."""
    return tagged(prompt, None)


# --------------------------------------------------------------------------------------------------- template

# Qwen3's chat template (trl/chat_templates/qwen3.jinja, byte-identical to the Qwen3 tokenizers'), with two changes
# that leave the text it renders unchanged:
# * the think delimiters are the variables ``ts``/``te`` (``<think>``/``</think>`` for Qwen3), so one template serves
#   any model's delimiters and renders Qwen3's text with the delimiters replaced;
# * each assistant turn's output after ``<|im_start|>assistant\n`` (think block, content, tool calls and
#   ``<|im_end|>\n``) sits inside ``{% generation %}`` markers, so trl's ``assistant_only_loss`` masks the rest. The
#   markers render nothing, and they sit where trl's qwen3_training.jinja puts them.
# Mode tags (/think, /no_think, /auto_think) are plain text to the template, as to Qwen3's.
_TEMPLATE = r"""{#- fastslow chat template: Qwen3's, with configurable think delimiters and generation markers. -#}
{%- set ts = "__THINK_START__" %}{%- set te = "__THINK_END__" %}
{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if te in content %}
                {%- set reasoning_content = content.split(te)[0].rstrip('\n').split(ts)[-1].lstrip('\n') %}
                {%- set content = content.split(te)[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- generation %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or (not loop.last and reasoning_content)) %}
            {{- ts + '\n' + reasoning_content.strip('\n') + '\n' + te + '\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
        {%- endgeneration %}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- ts + '\n\n' + te + '\n\n' }}
    {%- endif %}
{%- endif %}"""  # noqa: E501 (Qwen3's lines, kept as they are)

#: The first line of every fastslow template, new or old: how :func:`is_fastslow_template` recognises one.
TEMPLATE_MARK = "{#- fastslow chat template"


def chat_template(think: ThinkFormat) -> str:
    """The fastslow chat template (Jinja) for ``think``'s delimiters.

    It renders exactly what Qwen3's template renders, with ``<think>``/``</think>`` replaced by ``think``'s
    delimiters: a final assistant reply gets its think block normalised to ``<think>\\n...\\n</think>\\n\\n`` +
    answer (an empty block when it has none, the block from ``reasoning_content`` when given), earlier replies of the
    conversation lose theirs, and ``enable_thinking=False`` prefills an empty block after the generation prompt.
    """
    if not isinstance(think, ThinkFormat):
        raise TypeError(f"chat_template takes a ThinkFormat, got {think!r}")
    return _TEMPLATE.replace("__THINK_START__", think.start).replace("__THINK_END__", think.end)


def is_fastslow_template(template: Any) -> bool:
    """Whether ``template`` is a fastslow chat template (of this version or an older one)."""
    return isinstance(template, str) and template.startswith(TEMPLATE_MARK)


def install_chat_template(tokenizer: Any, think: ThinkFormat) -> Any:
    """Install the fastslow template and ``think``'s delimiters on any Hugging Face tokenizer, in place.

    The delimiters are added as ordinary (non-special) tokens so they survive ``skip_special_tokens=True``;
    ``<|im_start|>``/``<|im_end|>`` are added as special tokens when missing, and ``<|im_end|>`` becomes the
    EOS token so generation stops at the end of a reply. The format is recorded in ``init_kwargs`` (so
    ``save_pretrained`` keeps it and :meth:`ThinkFormat.from_tokenizer` reads it back). Returns the tokenizer.
    Resize the model's embeddings afterwards if ``len(tokenizer)`` grew.
    """
    template = chat_template(think)
    vocab = tokenizer.get_vocab()
    new_plain = [t for t in (think.start, think.end) if t not in vocab]
    if new_plain:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in new_plain])
    specials = [t for t in ("<|im_start|>", "<|im_end|>") if t not in vocab]
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
    # A delimiter that already existed as a special token (e.g. [unused16]) would be stripped when decoding.
    special = set(tokenizer.all_special_tokens) | {
        t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special
    }
    for t in (think.start, think.end):
        if t in special:
            raise ValueError(
                f"think delimiter {t!r} is a special token of this tokenizer; decoding with "
                "skip_special_tokens=True would drop it. Choose a delimiter that is an ordinary token."
            )
    tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else "<|im_end|>"
    tokenizer.chat_template = template
    record_think_format(tokenizer, think)
    return tokenizer


def record_think_format(tokenizer: Any, think: ThinkFormat) -> Any:
    """Write ``think`` into ``tokenizer.init_kwargs``, where :meth:`ThinkFormat.from_tokenizer` reads it."""
    tokenizer.init_kwargs["think_start"] = think.start
    tokenizer.init_kwargs["think_end"] = think.end
    return tokenizer


def _check_format(think: Any, caller: str) -> ThinkFormat:
    """``think`` when it is a ThinkFormat; a TypeError naming ``caller`` for anything else (a string pair too)."""
    if not isinstance(think, ThinkFormat):
        raise TypeError(f"{caller} takes a ThinkFormat (e.g. ThinkFormat.from_tokenizer(tokenizer)), got {think!r}")
    return think


def format_response(answer: str, thinking: str, think: ThinkFormat) -> str:
    """An assistant reply: ``<think>\\nthinking\\n</think>\\n\\nanswer``; empty ``thinking`` gives a fast reply.

    ``think`` is the run's :class:`ThinkFormat` (its delimiters replace ``<think>``/``</think>``).
    """
    think = _check_format(think, "format_response")
    body = f"\n{thinking.strip(chr(10))}\n" if thinking.strip() else "\n\n"
    return f"{think.start}{body}{think.end}\n\n{answer.strip()}"


# ---------------------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedResponse:
    """A reply split into its think block and its answer.

    ``mode`` is ``"fast"`` (empty block), ``"slow"`` (non-empty block), ``"unclosed"`` (a block was opened and
    never closed: there is no answer), or ``"none"`` (no block at all: the whole text is the answer, as when the
    prompt prefilled the block). ``well_formed`` is True only for exactly one leading block, not nested.
    """

    thinking: str | None
    answer: str | None
    mode: str
    well_formed: bool

    @property
    def closed(self) -> bool:
        return self.mode != "unclosed"


def parse_response(text: str, think: ThinkFormat) -> ParsedResponse:
    """Split a reply into ``(thinking, answer, mode)``.

    ``think`` is the run's :class:`ThinkFormat` (the delimiters the reply is read with).
    The block opens at the first ``think.start`` and closes at its *matching* ``think.end`` (nested blocks are
    counted, and make the reply not well formed). An unclosed block is reported as ``mode="unclosed"`` with no
    answer; it is never silently taken for an answer. A closing tag with no opening one (the opening tag was in
    the prompt) closes a block that began at the start of the text.
    """
    fmt = _check_format(think, "parse_response")
    think_start, think_end = fmt.start, fmt.end
    if not isinstance(text, str):
        text = _content_text(text)
    start = text.find(think_start)
    end_first = text.find(think_end)
    if start == -1 or (end_first != -1 and end_first < start):
        if end_first == -1:
            return ParsedResponse(None, text.strip(), "none", False)
        # The opening tag was prefilled in the prompt: the block runs from the start of the text.
        thinking, answer = text[:end_first], text[end_first + len(think_end) :]
        well = think_start not in answer and think_end not in answer and think_start not in thinking
        return _closed(thinking, answer, well)
    depth, close = 0, -1
    pattern = re.compile(re.escape(think_start) + "|" + re.escape(think_end))
    nested = False
    for match in pattern.finditer(text, start):
        if match.group() == think_start:
            depth += 1
            nested = nested or depth > 1
        else:
            depth -= 1
            if depth == 0:
                close = match.start()
                break
    if close == -1:
        return ParsedResponse(text[start + len(think_start) :].strip(), None, "unclosed", False)
    thinking = text[start + len(think_start) : close]
    answer = text[close + len(think_end) :]
    leading = text[:start].strip() == ""
    well = leading and not nested and think_start not in answer and think_end not in answer
    return _closed(thinking, answer, well)


def _closed(thinking: str, answer: str, well_formed: bool) -> ParsedResponse:
    thinking = thinking.strip()
    return ParsedResponse(thinking, answer.strip(), "slow" if thinking else "fast", well_formed)


def completion_text(completion: Any) -> str:
    """The text of a completion given as a string or as trl's list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        parts = [_content_text(m.get("content")) for m in completion if isinstance(m, dict)]
        return "".join(parts)
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    return "" if completion is None else str(completion)
