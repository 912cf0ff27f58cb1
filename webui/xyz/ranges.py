"""Axis value text -> values, with A1111's X/Y/Z range syntax.

Users type axis values the way A1111 taught them: a CSV list (quotes protect commas), where an item of a
numeric axis may be a range: `1-5`, `1-5 (+2)`, `10-1 (-3)`, `1-10 [5]` (five evenly spaced values).
Everything is checked here so a typo is reported, naming the axis and the item, before any image is
generated, and an accidental `1-1000000` is refused before a million values are built.

Deliberate differences from A1111: ranges include their end in both directions (A1111's `10-1 (-3)`
stops at 4), a range without an increment counts down when the end is below the start, and empty items
(`1,,3`) are errors instead of silently becoming values.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Sequence
from fractions import Fraction

DEFAULT_MAX_VALUES = 1000
"""Cap on how many values one axis may expand to unless the caller passes its own limit."""

FLOAT_STEP_TOLERANCE = 1e-9
"""A float step may miss the end by rounding error (0.1 + 4 * 0.1 != 0.5); within this fraction of a step
the end still counts as reached."""

_INT = r"[+-]?\d+"
_FLOAT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"


def _range_pattern(number: str) -> re.Pattern[str]:
    """`start-end`, optionally followed by `(step)` or `[count]`, with free spacing."""
    return re.compile(
        rf"\s*(?P<start>{number})\s*-\s*(?P<end>{number})\s*"
        rf"(?:\(\s*(?P<step>{number})\s*\)|\[\s*(?P<count>\d+)\s*\])?\s*"
    )


_INT_RANGE = _range_pattern(_INT)
_FLOAT_RANGE = _range_pattern(_FLOAT)
# Plain values are matched before int()/float() so that "nan", "inf", "1_000" and " 0x10" are refused.
_PLAIN_INT = re.compile(rf"\s*{_INT}\s*")
_PLAIN_FLOAT = re.compile(rf"\s*{_FLOAT}(?:[eE][+-]?\d+)?\s*")

_INT_HELP = "a whole number or a range like 1-5, 1-5 (+2), 10-1 (-3) or 1-10 [5]"
_FLOAT_HELP = "a number or a range like 0-1 (+0.25) or 0-1 [5]"


class AxisValueError(ValueError):
    """An axis or one of its values cannot be used; the message names the axis and the offending item."""


def split_values(text: str, axis: str) -> list[str]:
    """The trimmed CSV items of `text` (`a, "b, c", d` -> `a`, `b, c`, `d`); an empty item is an error.

    Blank lines are skipped, so one value per line works too. Text that is only whitespace gives an empty
    list: whether an axis may be empty is for the caller to decide.
    """
    items: list[str] = []
    for row in csv.reader(io.StringIO(text.strip()), skipinitialspace=True):
        if not row:
            continue
        for cell in row:
            item = cell.strip()
            if not item:
                raise AxisValueError(f"{axis}: value {len(items) + 1} is empty in {text.strip()!r}")
            items.append(item)
    return items


def join_values(values: Iterable[str]) -> str:
    """CSV text that `split_values` reads back as `values`: `, `-separated, quoted only where needed."""
    rendered: list[str] = []
    for value in values:
        if any(character in value for character in ',"\n\r'):
            rendered.append('"' + value.replace('"', '""') + '"')
        else:
            rendered.append(value)
    return ", ".join(rendered)


def parse_int_values(
    values: str | Sequence[str], axis: str, *, max_values: int = DEFAULT_MAX_VALUES
) -> list[int]:
    """Whole numbers from CSV text (or already split items), expanding `1-5`, `1-5 (+2)` and `1-10 [5]`.

    `[count]` spaces the values evenly and truncates them to integers, as A1111 does (`1-10 [5]` ->
    1, 3, 5, 7, 10). A step that cannot reach the end, a zero step or a zero count is an error, as is
    more than `max_values` values in all.
    """
    parsed: list[int] = []
    for item in value_items(values, axis):
        parsed.extend(_expand_int(item, axis, max_values - len(parsed), max_values))
    return parsed


def parse_float_values(
    values: str | Sequence[str], axis: str, *, max_values: int = DEFAULT_MAX_VALUES
) -> list[float]:
    """Numbers from CSV text (or already split items), expanding `0.1-0.5 (+0.1)` and `0-1 [5]`.

    A stepped range includes its end when the last step lands on it within `FLOAT_STEP_TOLERANCE` of a
    step, and values are rounded to 12 significant digits so `0.1 (+0.1)` gives 0.3, not
    0.30000000000000004 (which would also show up in the legend).
    """
    parsed: list[float] = []
    for item in value_items(values, axis):
        parsed.extend(_expand_float(item, axis, max_values - len(parsed), max_values))
    return parsed


def value_items(values: str | Sequence[str], axis: str) -> list[str]:
    """Split text, or trim and check a list the UI already split (a multiselect); empty items are errors."""
    if isinstance(values, str):
        return split_values(values, axis)
    items = [str(value).strip() for value in values]
    for position, item in enumerate(items, start=1):
        if not item:
            raise AxisValueError(f"{axis}: value {position} is empty")
    return items


def _check_room(axis: str, item: str, count: int, room: int, max_values: int) -> None:
    if count > room:
        raise AxisValueError(
            f"{axis}: {item!r} expands to {count} values, but an axis may have at most {max_values} values"
        )


def _direction_error(axis: str, item: str) -> AxisValueError:
    return AxisValueError(f"{axis}: {item!r} never reaches its end: the increment must move from start toward end")


def _expand_int(item: str, axis: str, room: int, max_values: int) -> list[int]:
    if _PLAIN_INT.fullmatch(item):
        _check_room(axis, item, 1, room, max_values)
        return [int(item)]
    match = _INT_RANGE.fullmatch(item)
    if match is None:
        raise AxisValueError(f"{axis}: {item!r} is not {_INT_HELP}")
    start, end = int(match["start"]), int(match["end"])
    if match["count"] is not None:
        count = int(match["count"])
        if count < 1:
            raise AxisValueError(f"{axis}: {item!r} asks for {count} values; the count in [...] must be at least 1")
        _check_room(axis, item, count, room, max_values)
        if count == 1:
            return [start]
        # Exact fractions, then truncation toward zero like int(numpy.linspace(...)), with no float drift.
        return [int(start + Fraction((end - start) * index, count - 1)) for index in range(count)]
    step = int(match["step"]) if match["step"] is not None else (1 if end >= start else -1)
    if step == 0:
        raise AxisValueError(f"{axis}: {item!r} has an increment of 0")
    if (end - start) * step < 0:
        raise _direction_error(axis, item)
    count = (end - start) // step + 1
    _check_room(axis, item, count, room, max_values)
    return [start + index * step for index in range(count)]


def _tidy_float(value: float) -> float:
    """Drop binary rounding noise (12 significant digits); exact zero instead of -0.0."""
    return float(f"{value:.12g}") + 0.0


def _expand_float(item: str, axis: str, room: int, max_values: int) -> list[float]:
    if _PLAIN_FLOAT.fullmatch(item):
        value = float(item)
        if not math.isfinite(value):
            raise AxisValueError(f"{axis}: {item!r} is not a finite number")
        _check_room(axis, item, 1, room, max_values)
        return [value]
    match = _FLOAT_RANGE.fullmatch(item)
    if match is None:
        raise AxisValueError(f"{axis}: {item!r} is not {_FLOAT_HELP}")
    start, end = float(match["start"]), float(match["end"])
    if match["count"] is not None:
        count = int(match["count"])
        if count < 1:
            raise AxisValueError(f"{axis}: {item!r} asks for {count} values; the count in [...] must be at least 1")
        _check_room(axis, item, count, room, max_values)
        if count == 1:
            return [start]
        values = [_tidy_float(start + (end - start) * index / (count - 1)) for index in range(count)]
        values[-1] = end
        return values
    step = float(match["step"]) if match["step"] is not None else (1.0 if end >= start else -1.0)
    if step == 0:
        raise AxisValueError(f"{axis}: {item!r} has an increment of 0")
    if (end - start) * step < 0:
        raise _direction_error(axis, item)
    steps_to_end = (end - start) / step
    count = math.floor(steps_to_end + FLOAT_STEP_TOLERANCE) + 1
    _check_room(axis, item, count, room, max_values)
    values = [_tidy_float(start + index * step) for index in range(count)]
    if abs(steps_to_end - (count - 1)) <= FLOAT_STEP_TOLERANCE:
        values[-1] = end
    return values
