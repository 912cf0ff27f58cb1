"""X/Y/Z axis value text: A1111's CSV and range syntax, and the errors a typo must produce."""

from __future__ import annotations

import pytest

from webui.xyz.ranges import (
    AxisValueError,
    join_values,
    parse_float_values,
    parse_int_values,
    split_values,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1-5", [1, 2, 3, 4, 5]),
        ("1-5 (+2)", [1, 3, 5]),
        ("1-6 (+2)", [1, 3, 5]),
        ("10-1 (-3)", [10, 7, 4, 1]),
        ("5-1", [5, 4, 3, 2, 1]),
        ("1-10 [5]", [1, 3, 5, 7, 10]),
        ("0-100 [3]", [0, 50, 100]),
        ("7-9 [1]", [7]),
        ("1, 3-5, 9", [1, 3, 4, 5, 9]),
        ("-5--3", [-5, -4, -3]),
        (" 4 ,  -2 , +3 ", [4, -2, 3]),
        ("3-3", [3]),
        ("1 - 5 ( +2 )", [1, 3, 5]),
    ],
)
def test_int_values_and_ranges(text: str, expected: list[int]) -> None:
    assert parse_int_values(text, "X axis (Steps)") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.1-0.5 (+0.1)", [0.1, 0.2, 0.3, 0.4, 0.5]),
        ("0-1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("1-0 (-0.5)", [1.0, 0.5, 0.0]),
        ("0-1 (+0.3)", [0.0, 0.3, 0.6, 0.9]),
        ("7, 7.5, .25, 1e-3", [7.0, 7.5, 0.25, 0.001]),
        ("4-6", [4.0, 5.0, 6.0]),
        ("-1.5--0.5 (+0.5)", [-1.5, -1.0, -0.5]),
    ],
)
def test_float_values_and_ranges(text: str, expected: list[float]) -> None:
    values = parse_float_values(text, "Y axis (CFG Scale)")
    assert values == expected  # exact: rounding noise such as 0.30000000000000004 must be gone


def test_float_range_includes_an_end_reached_only_up_to_rounding_error() -> None:
    # 0.7 / 0.1 = 6.999999999999999 in binary floating point; the end must still be included.
    assert parse_float_values("0-0.7 (+0.1)", "X")[-1] == 0.7
    assert len(parse_float_values("0-0.7 (+0.1)", "X")) == 8


def test_csv_quoting_keeps_commas_inside_quotes_and_trims() -> None:
    assert split_values('a, "b, c", d', "X axis (Prompt S/R)") == ["a", "b, c", "d"]
    assert split_values("  one ,two  ", "X") == ["one", "two"]
    assert split_values("   ", "X") == []


def test_values_one_per_line_are_accepted() -> None:
    assert split_values("cat\n\ndog\n", "X") == ["cat", "dog"]


def test_join_values_round_trips_through_split() -> None:
    values = ["plain", "with, comma", 'a "quoted" word']
    assert split_values(join_values(values), "X") == values
    assert join_values(["1", "2"]) == "1, 2"


def test_lists_from_a_multiselect_are_parsed_like_text() -> None:
    assert parse_int_values(["1-3", " 7 "], "X") == [1, 2, 3, 7]
    with pytest.raises(AxisValueError, match="value 2 is empty"):
        parse_int_values(["1", "  "], "X")


@pytest.mark.parametrize(
    ("text", "bad_item", "reason"),
    [
        ("1, 2x, 3", "2x", "not a whole number"),
        ("1.5", "1.5", "not a whole number"),
        ("1-5 (+2", "1-5 (+2", "not a whole number"),
        ("1-5 (0)", "1-5 (0)", "increment of 0"),
        ("1-5 (-1)", "1-5 (-1)", "never reaches its end"),
        ("10-1 (+3)", "10-1 (+3)", "never reaches its end"),
        ("1-10 [0]", "1-10 [0]", "at least 1"),
        ("nan", "nan", "not a whole number"),
    ],
)
def test_int_errors_name_the_axis_and_the_item(text: str, bad_item: str, reason: str) -> None:
    with pytest.raises(AxisValueError) as raised:
        parse_int_values(text, "X axis (Steps)")
    message = str(raised.value)
    assert message.startswith("X axis (Steps)")
    assert repr(bad_item) in message
    assert reason in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0.1-0.5 (0)", "increment of 0"),
        ("0-1 (-0.1)", "never reaches its end"),
        ("abc", "not a number"),
        ("inf", "not a number"),
        ("nan", "not a number"),
        ("0-1 [0]", "at least 1"),
    ],
)
def test_float_errors(text: str, reason: str) -> None:
    with pytest.raises(AxisValueError, match=reason) as raised:
        parse_float_values(text, "Z axis (Denoising)")
    assert "Z axis (Denoising)" in str(raised.value)


def test_empty_item_is_an_error_not_a_value() -> None:
    with pytest.raises(AxisValueError, match="value 2 is empty"):
        parse_int_values("1,,3", "X axis (Seed)")
    with pytest.raises(AxisValueError, match="empty"):
        split_values("a, , b", "X")


def test_absurd_counts_are_refused_before_building_them() -> None:
    with pytest.raises(AxisValueError, match=r"'1-1000000' expands to 1000000 values.*at most 1000"):
        parse_int_values("1-1000000", "X axis (Seed)")
    with pytest.raises(AxisValueError, match="at most 10"):
        parse_int_values("1-5, 6-11", "X", max_values=10)
    with pytest.raises(AxisValueError, match="at most 20"):
        parse_float_values("0-1 [21]", "X", max_values=20)
    assert len(parse_int_values("1-10", "X", max_values=10)) == 10
