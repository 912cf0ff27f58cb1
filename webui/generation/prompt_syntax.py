"""The AUTOMATIC1111 prompt language, as plain Python (no torch, no lark).

Three independent passes, applied by the generation code in this order, as A1111 does:

1. `extract_network_tags` strips `<lora:name:0.8>`-style extra-network tags out of the prompt.
2. `get_prompt_schedule` expands prompt editing (`[from:to:when]`) and alternation (`[a|b]`) into the
   plain texts used over the sampling steps.
3. `parse_prompt_attention` splits each of those texts into (text, weight) chunks for the text encoder.

A1111 users rely on malformed prompts being tolerated (an unbalanced bracket is just a character), so no
function here raises on any input string: text that forms no valid construct is kept literally.

Semantics follow A1111 v1.10 (modules/prompt_parser.py and modules/extra_networks.py); the few deliberate
differences are listed in the docstrings of the affected functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator, Union

BREAK_MARKER = "BREAK"
"""Text of the chunk `parse_prompt_attention` emits (with weight -1) where the prompt says BREAK."""

BREAK_WEIGHT = -1.0

ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1


class PromptSyntaxError(ValueError):
    """Raised only for arguments that cannot describe a prompt at all (e.g. a non-positive step count).

    Malformed prompt *text* never raises: A1111 treats it literally and so do we.
    """


# ---------------------------------------------------------------------------------------------------------
# Prompt editing and alternation: [from:to:when], [to:when], [from::when], [a|b|c]
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledPrompt:
    """One span of the sampling schedule.

    `end_at_step` is the 1-based number of the last sampling step that uses `text`; the span starts right
    after the previous entry's `end_at_step` (or at step 1). With a 0-based sampler step index `i`, the text
    to use is the one of the first entry with `i < end_at_step`. The last entry always ends at the step count.
    (A1111's samplers compare `i <= end_at_step`, which switches one step later than that.)
    """

    end_at_step: int
    text: str


# Lark's common.SIGNED_NUMBER, which is what A1111 accepts as the `when` of a prompt edit.
_SIGNED_NUMBER = re.compile(
    r"\s*([+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+))\s*"
)


# The characters that mean something to the schedule grammar; runs of anything else are read in one go.
_SPECIAL_CHAR = re.compile(r"[\\\[\]():|]")


@dataclass(frozen=True)
class _Edit:
    """`[before:after:when]`; `before` is empty for the `[after:when]` form."""

    before: tuple[_Item, ...]
    after: tuple[_Item, ...]
    when_text: str


@dataclass(frozen=True)
class _Group:
    """Emphasis brackets `(a)`, `(a:b)`, `[a]`, kept verbatim (with any edits inside them) for the attention pass."""

    items: tuple[_Item, ...]


@dataclass(frozen=True)
class _Alternation:
    """`[a|b|c]`: option `(step - 1) % len(options)` is used at each step."""

    options: tuple[tuple[_Item, ...], ...]


_Item = Union[str, _Group, _Edit, _Alternation]


class _Unparseable(Exception):
    """A1111's grammar rejects the whole prompt (a stray `|` or a dangling backslash): keep it verbatim."""


@dataclass
class _OpenBracket:
    """A `(` or `[` whose construct is not closed yet, with what has been read inside it so far."""

    opener: str
    segments: list[list[_Item]]
    delimiters: list[str]


def _spill_open_brackets(stack: list[_OpenBracket], top_level: list[_Item]) -> None:
    """Turn every open bracket into literal text, keeping the complete constructs found inside them.

    A construct that cannot close poisons all brackets enclosing it (their content must be a valid
    prompt), so on any failure the whole stack becomes plain characters, exactly as if the parser had
    restarted after the outermost open bracket. A `|` that ends up outside every alternation makes the
    whole prompt unparseable, as in A1111.
    """
    for bracket in stack:
        top_level.append(bracket.opener)
        for index, segment in enumerate(bracket.segments):
            if index > 0:
                delimiter = bracket.delimiters[index - 1]
                if delimiter == "|":
                    raise _Unparseable
                top_level.append(delimiter)
            top_level.extend(segment)
    stack.clear()


def _close_bracket(bracket: _OpenBracket, closer: str) -> _Item | None:
    """The item a just-closed bracket turns into, or None when its content is not a valid construct."""
    segments = bracket.segments
    delimiters = bracket.delimiters
    if bracket.opener == "(":
        if closer != ")" or len(delimiters) > 1 or "|" in delimiters:
            return None
        if delimiters:
            return _Group(("(", *segments[0], ":", *segments[1], ")"))
        return _Group(("(", *segments[0], ")"))

    if closer != "]":
        return None
    if not delimiters:
        return _Group(("[", *segments[0], "]"))
    if all(delimiter == "|" for delimiter in delimiters):
        return _Alternation(tuple(tuple(option) for option in segments))
    if "|" in delimiters or len(delimiters) > 2:
        return None
    when_texts = [item for item in segments[-1] if isinstance(item, str)]
    if len(when_texts) != len(segments[-1]):
        return None
    number = _SIGNED_NUMBER.fullmatch("".join(when_texts))
    if number is None:
        return None
    before = tuple(segments[0]) if len(delimiters) == 2 else ()
    return _Edit(before=before, after=tuple(segments[-2]), when_text=number.group(1))


def _parse_schedule_syntax(prompt: str) -> list[_Item]:
    """Parse prompt editing / alternation into items; raises _Unparseable where A1111 keeps the prompt as is.

    Iterative (no recursion), so deeply nested brackets cannot overflow the stack, and linear in the
    prompt length.
    """
    top_level: list[_Item] = []
    stack: list[_OpenBracket] = []

    def current() -> list[_Item]:
        return stack[-1].segments[-1] if stack else top_level

    position = 0
    length = len(prompt)
    while position < length:
        char = prompt[position]
        if char == "\\":
            # An escape pair is ordinary text (kept with its backslash); a backslash with nothing to escape
            # (end of prompt, or before a newline) is a syntax error in A1111's grammar.
            if position + 1 >= length or prompt[position + 1] == "\n":
                raise _Unparseable
            current().append(prompt[position : position + 2])
            position += 2
            continue
        if char in "([":
            stack.append(_OpenBracket(opener=char, segments=[[]], delimiters=[]))
        elif char in ")]":
            if stack:
                replacement = _close_bracket(stack[-1], char)
                if replacement is None:
                    _spill_open_brackets(stack, top_level)
                    top_level.append(char)
                else:
                    stack.pop()
                    current().append(replacement)
            else:
                top_level.append(char)
        elif char in ":|":
            if stack:
                stack[-1].delimiters.append(char)
                stack[-1].segments.append([])
            elif char == "|":
                raise _Unparseable
            else:
                top_level.append(char)
        else:
            next_special = _SPECIAL_CHAR.search(prompt, position)
            run_end = next_special.start() if next_special else length
            current().append(prompt[position:run_end])
            position = run_end
            continue
        position += 1
    _spill_open_brackets(stack, top_level)
    return top_level


def _iter_nodes(items: list[_Item]) -> Iterator[_Edit | _Alternation]:
    """Every edit and alternation in the tree, including those inside branches not taken at any step."""
    pending: list[tuple[_Item, ...] | list[_Item]] = [items]
    while pending:
        for item in pending.pop():
            if isinstance(item, _Group):
                pending.append(item.items)
            elif isinstance(item, _Edit):
                yield item
                pending.extend((item.before, item.after))
            elif isinstance(item, _Alternation):
                yield item
                pending.extend(item.options)


def _render(items: list[_Item], step: int, switch_step: Callable[[_Edit], int]) -> str:
    """The plain prompt text at 1-based sampling step `step`."""
    pieces: list[str] = []
    pending: list[Iterator[_Item]] = [iter(items)]
    while pending:
        for item in pending[-1]:
            if isinstance(item, str):
                pieces.append(item)
                continue
            if isinstance(item, _Group):
                chosen = item.items
            elif isinstance(item, _Edit):
                chosen = item.before if step <= switch_step(item) else item.after
            else:
                chosen = item.options[(step - 1) % len(item.options)]
            pending.append(iter(chosen))
            break
        else:
            pending.pop()
    return "".join(pieces)


def _switch_step_resolver(
    base_steps: int, hires_steps: int | None, use_old_scheduling: bool
) -> tuple[int, Callable[[_Edit], int]]:
    """The step count of the pass being scheduled, and a function giving each edit's last `before` step.

    A1111 v1.10 (default): a `when` written with a decimal point is a fraction of the steps, one without
    is a step number. With `use_old_scheduling` (A1111's compatibility option) any value below 1 is a
    fraction and anything else a step number. For the hires-fix pass (`hires_steps` given) the timeline
    continues from the first pass: fractions above 1.0 and step numbers above `base_steps` land in it.
    """
    if hires_steps is None or use_old_scheduling:
        steps, step_offset, fraction_offset = base_steps, 0, 0.0
    else:
        steps, step_offset, fraction_offset = hires_steps, base_steps, 1.0

    def switch_step(edit: _Edit) -> int:
        value = float(edit.when_text)
        if use_old_scheduling:
            value = value * steps if value < 1 else value
        elif "." in edit.when_text:
            value = (value - fraction_offset) * steps
        else:
            value = value - step_offset
        if value >= steps:
            return steps
        # Everything at or below 0 behaves the same (the `after` text from the start); this also keeps
        # -inf from an absurd exponent out of int().
        return int(max(value, -1.0))

    return steps, switch_step


def get_prompt_schedule(
    prompt: str,
    steps: int,
    *,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[ScheduledPrompt]:
    """Expand prompt editing and alternation into the texts used over `steps` sampling steps.

    `[from:to:when]` uses `from` up to step `when` and `to` after it; `[to:when]` adds `to` after `when`;
    `[from::when]` removes `from` after `when`; `[a|b|c]` cycles through its options every step. `when`
    is a step number, or a fraction of `steps` when written with a decimal point (see
    `_switch_step_resolver` for the exact A1111 v1.10 rule and the hires-fix variant, selected by
    `hires_steps` = the second pass's step count). Constructs nest; `\\[ \\] \\: \\|` are literal and
    keep their backslash (parse_prompt_attention removes it later). Emphasis brackets are left untouched.

    Like A1111, a prompt its grammar rejects (a `|` outside any `[...]`, a trailing backslash) is used
    verbatim for all steps, and unbalanced brackets are plain characters. Unlike A1111, consecutive steps
    with identical text are merged into one entry (A1111 lists an entry per potential switch step; the
    text used at each step is the same). Where A1111's grammar is ambiguous (an edit directly next to a
    stray bracket or colon, e.g. `[a:2]))`), lark 1.1.2 picks a reading that can change from one process
    to the next; here a well-formed edit is always recognised.
    """
    if steps < 1 or (hires_steps is not None and hires_steps < 1):
        raise PromptSyntaxError(f"step counts must be at least 1, got steps={steps}, hires_steps={hires_steps}")
    total_steps, switch_step = _switch_step_resolver(steps, hires_steps, use_old_scheduling)
    try:
        items = _parse_schedule_syntax(prompt)
    except _Unparseable:
        return [ScheduledPrompt(end_at_step=total_steps, text=prompt)]

    boundaries = {total_steps}
    for node in _iter_nodes(items):
        if isinstance(node, _Alternation):
            boundaries.update(range(1, total_steps + 1))
            break
        last_before_step = switch_step(node)
        if last_before_step >= 1:
            boundaries.add(last_before_step)

    schedule: list[ScheduledPrompt] = []
    for boundary in sorted(boundaries):
        text = _render(items, boundary, switch_step)
        if schedule and schedule[-1].text == text:
            schedule[-1] = ScheduledPrompt(end_at_step=boundary, text=text)
        else:
            schedule.append(ScheduledPrompt(end_at_step=boundary, text=text))
    return schedule


# ---------------------------------------------------------------------------------------------------------
# Attention: (a) (a:1.3) [a] and BREAK
# ---------------------------------------------------------------------------------------------------------

# One token per match, tried in this order: escapes, a lone backslash (dropped, as in A1111), openers,
# a weighted closer, closers, runs of ordinary text, a lone colon.
_ATTENTION_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]
    | \\
    | [(\[]
    | :\s*(?P<weight>[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))\s*\)
    | [)\]]
    | [^\\()\[\]:]+
    | :
    """,
    re.VERBOSE,
)

_BREAK_SEPARATOR = re.compile(r"\s*\bBREAK\b\s*")


@dataclass
class _Chunk:
    text: str
    weight: float
    is_break: bool = False


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) chunks the way A1111's parse_prompt_attention does.

    `(a)` multiplies a's weight by 1.1, `[a]` divides it by 1.1, `(a:1.3)` multiplies it by 1.3; they nest
    multiplicatively. `\\( \\) \\[ \\] \\\\` are literal characters; another backslash is dropped.
    Unmatched closers are literal, unclosed openers apply to the end of the prompt. The word BREAK
    (uppercase, on word boundaries; surrounding whitespace is dropped) becomes the chunk
    (BREAK_MARKER, -1.0). Neighbouring chunks with equal weight are merged.

    Deliberate differences from A1111: BREAK keeps weight -1.0 inside brackets (A1111 multiplies it,
    which silently turns the break into a negatively weighted word), empty chunks are omitted (they
    tokenize to nothing), and a malformed weight such as `(a:1.2.3)` is read as text instead of raising.
    An empty prompt gives [("", 1.0)].
    """
    chunks: list[_Chunk] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for chunk in chunks[start:]:
            if not chunk.is_break:
                chunk.weight *= multiplier

    for match in _ATTENTION_TOKEN.finditer(text):
        token = match.group(0)
        weight = match.group("weight")
        if token.startswith("\\"):
            chunks.append(_Chunk(token[1:], 1.0))
        elif token == "(":
            open_round.append(len(chunks))
        elif token == "[":
            open_square.append(len(chunks))
        elif weight is not None and open_round:
            multiply_from(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            multiply_from(open_round.pop(), ROUND_BRACKET_MULTIPLIER)
        elif token == "]" and open_square:
            multiply_from(open_square.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:
            for index, part in enumerate(_BREAK_SEPARATOR.split(token)):
                if index > 0:
                    chunks.append(_Chunk(BREAK_MARKER, BREAK_WEIGHT, is_break=True))
                chunks.append(_Chunk(part, 1.0))

    # A1111 applies the unclosed brackets' multipliers outermost first, round before square; the order
    # matters for the exact float results users see in infotext and tests.
    for start in open_round:
        multiply_from(start, ROUND_BRACKET_MULTIPLIER)
    for start in open_square:
        multiply_from(start, SQUARE_BRACKET_MULTIPLIER)

    merged: list[_Chunk] = []
    for chunk in chunks:
        if not chunk.text:
            continue
        previous = merged[-1] if merged else None
        if previous and not previous.is_break and not chunk.is_break and previous.weight == chunk.weight:
            previous.text += chunk.text
        else:
            merged.append(chunk)
    if not merged:
        return [("", 1.0)]
    return [(chunk.text, chunk.weight) for chunk in merged]


# ---------------------------------------------------------------------------------------------------------
# Extra networks: <lora:name:0.8>, <hypernet:name:1>, ...
# ---------------------------------------------------------------------------------------------------------

_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class NetworkTag:
    """One `<kind:name[:arg...]>` tag.

    `args` are the raw `:`-separated strings after the name, in order; A1111 also accepts `key=value`
    items (e.g. `te=0.5`), which appear verbatim in `args` and are split out by `named_args`.
    """

    kind: str
    name: str
    args: tuple[str, ...]

    @property
    def positional_args(self) -> tuple[str, ...]:
        """The args without exactly one `=` (A1111's ExtraNetworkParams.positional minus the name)."""
        return tuple(arg for arg in self.args if arg.count("=") != 1)

    @property
    def named_args(self) -> dict[str, str]:
        """`key=value` args as a dict (A1111's ExtraNetworkParams.named)."""
        return dict(arg.split("=", 1) for arg in self.args if arg.count("=") == 1)  # type: ignore[misc]


def extract_network_tags(prompt: str) -> tuple[str, list[NetworkTag]]:
    """Remove every extra-network tag from the prompt and return the remaining text and the tags in order.

    Like A1111, any `<word:...>` is removed whether or not `word` is a known network kind (unknown kinds
    are for the caller to report), surrounding whitespace and commas are left as they are, and tags are
    removed everywhere, including inside prompt-editing brackets.
    """
    tags: list[NetworkTag] = []

    def take(match: re.Match[str]) -> str:
        name, *args = match.group(2).split(":")
        tags.append(NetworkTag(kind=match.group(1), name=name, args=tuple(args)))
        return ""

    return _NETWORK_TAG.sub(take, prompt), tags
