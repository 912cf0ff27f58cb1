"""The wildcard prompt language: parse a template once, then draw from it (random) or list it (combinatorial).

    __colors__            one line of the wildcard file colors.txt (nested: a line may use the syntax too)
    {red|blue|green}      one of the variants (variants nest: {red|{dark|light} blue})
    {2$$red|blue|green}   two different variants, joined by ", "; {1-3$$...} between one and three
    \\{ \\} \\|            a literal brace or bar

Text that is not this syntax is left exactly as written, so a prompt without it expands to itself; a `{`
without its `}` and a wildcard name that has no file stay literal text too (a typo never breaks a job).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

SEPARATOR = ", "
MAX_DEPTH = 8  # wildcard files that name each other stop expanding here
_WILDCARD = re.compile(r"__([A-Za-z0-9][A-Za-z0-9_\-/]*?)__")
_COUNT = re.compile(r"\s*(\d+)(?:\s*-\s*(\d+))?\s*\$\$")

# A wildcard name -> its lines (None when there is no such file).
Lookup = Callable[[str], "list[str] | None"]


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Wildcard:
    name: str


@dataclass(frozen=True)
class Variants:
    options: tuple[tuple, ...]   # each option is a sequence of nodes
    low: int = 1
    high: int = 1


Node = Text | Wildcard | Variants


def has_syntax(template: str, lookup: Lookup) -> bool:
    """Whether `template` holds variants or known wildcards (a prompt without them is left as typed)."""
    return any(not isinstance(node, Text) for node in parse(template, lookup))


def parse(template: str, lookup: Lookup) -> tuple[Node, ...]:
    nodes, _ = _sequence(template, 0, lookup, top=True)
    return tuple(_merge_text(nodes))


def _merge_text(nodes: list[Node]) -> list[Node]:
    merged: list[Node] = []
    for node in nodes:
        if isinstance(node, Text) and merged and isinstance(merged[-1], Text):
            merged[-1] = Text(merged[-1].text + node.text)
        elif not (isinstance(node, Text) and not node.text):
            merged.append(node)
    return merged


def _sequence(text: str, position: int, lookup: Lookup, top: bool) -> tuple[list[Node], int]:
    """Nodes up to the end (top level) or up to an unescaped `|` / `}` (inside variants)."""
    nodes: list[Node] = []
    literal = []
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text) and text[position + 1] in "{}|\\":
            literal.append(text[position + 1])
            position += 2
            continue
        if not top and char in "|}":
            break
        if char == "{":
            parsed = _variants(text, position, lookup)
            if parsed is not None:
                nodes += [Text("".join(literal)), parsed[0]]
                literal, position = [], parsed[1]
                continue
        match = _WILDCARD.match(text, position) if char == "_" else None
        if match is not None and lookup(match.group(1)) is not None:
            nodes += [Text("".join(literal)), Wildcard(match.group(1))]
            literal, position = [], match.end()
            continue
        literal.append(char)
        position += 1
    nodes.append(Text("".join(literal)))
    return nodes, position


def _variants(text: str, start: int, lookup: Lookup) -> tuple[Variants, int] | None:
    """`{...}` from `start`; None when the brace is never closed (then it is literal text)."""
    position = start + 1
    low = high = 1
    count = _COUNT.match(text, position)
    if count is not None:
        low = int(count.group(1))
        high = int(count.group(2)) if count.group(2) else low
        position = count.end()
    options = []
    while True:
        nodes, position = _sequence(text, position, lookup, top=False)
        options.append(tuple(_merge_text(nodes)))
        if position >= len(text):
            return None
        if text[position] == "}":
            low, high = min(low, high), max(low, high)
            return Variants(tuple(options), min(low, len(options)), min(high, len(options))), position + 1
        position += 1  # past "|"


def _lines(name: str, lookup: Lookup, depth: int) -> list[tuple[Node, ...]]:
    if depth >= MAX_DEPTH:
        return [(Text(f"__{name}__"),)]
    return [parse(line, lookup) for line in lookup(name) or []] or [(Text(""),)]


# -- random ------------------------------------------------------------------------------------------------
def draw(nodes: tuple[Node, ...], rng: random.Random, lookup: Lookup, depth: int = 0) -> str:
    """One random expansion (the same `rng` state gives the same text)."""
    out = []
    for node in nodes:
        if isinstance(node, Text):
            out.append(node.text)
        elif isinstance(node, Wildcard):
            out.append(draw(rng.choice(_lines(node.name, lookup, depth)), rng, lookup, depth + 1))
        else:
            count = rng.randint(node.low, node.high)
            picked = rng.sample(node.options, count)
            out.append(SEPARATOR.join(draw(option, rng, lookup, depth) for option in picked))
    return "".join(out)


# -- combinatorial -----------------------------------------------------------------------------------------
def combinations(nodes: tuple[Node, ...], lookup: Lookup, depth: int = 0) -> Iterator[str]:
    """Every expansion, lazily, the last part varying fastest (the caller cuts the list off)."""
    if not nodes:
        yield ""
        return
    head, rest = nodes[0], nodes[1:]
    for first in _node_combinations(head, lookup, depth):
        for tail in combinations(rest, lookup, depth):
            yield first + tail


def _node_combinations(node: Node, lookup: Lookup, depth: int) -> Iterator[str]:
    if isinstance(node, Text):
        yield node.text
    elif isinstance(node, Wildcard):
        for line in _lines(node.name, lookup, depth):
            yield from combinations(line, lookup, depth + 1)
    else:
        for count in range(node.low, node.high + 1):
            for picked in itertools.combinations(node.options, count):
                yield from _joined(picked, lookup, depth)


def _joined(options: tuple, lookup: Lookup, depth: int) -> Iterator[str]:
    if not options:
        yield ""
        return
    for first in combinations(options[0], lookup, depth):
        for tail in _joined(options[1:], lookup, depth):
            yield first + (SEPARATOR + tail if len(options) > 1 else "")
