"""The A1111 prompt language: prompt editing, alternation, attention weights, BREAK and extra-network tags.

Many expected values are A1111 v1.10's own doctest examples (modules/prompt_parser.py); where A1111
lists one entry per potential switch step, the expectation here merges consecutive equal texts.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webui.generation.prompt_syntax import (
    BREAK_MARKER,
    NetworkTag,
    PromptSyntaxError,
    ScheduledPrompt,
    extract_network_tags,
    get_prompt_schedule,
    parse_prompt_attention,
)


def schedule(prompt: str, steps: int = 10, **options) -> list[tuple[int, str]]:
    return [(entry.end_at_step, entry.text) for entry in get_prompt_schedule(prompt, steps, **options)]


# --------------------------------------------------------------------------------------------- schedules


def test_plain_prompt_is_one_entry_for_all_steps():
    assert get_prompt_schedule("test", 10) == [ScheduledPrompt(end_at_step=10, text="test")]
    assert schedule("", 7) == [(7, "")]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ],
)
def test_a1111_doctest_schedules(prompt, expected):
    assert schedule(prompt) == expected


def test_a1111_doctest_alternation_with_emphasis_inside():
    assert schedule("[a|(b:1.1)]") == [(step, "a" if step % 2 else "(b:1.1)") for step in range(1, 11)]


def test_alternation_with_empty_options():
    assert schedule("[fe|]male") == [(step, "female" if step % 2 else "male") for step in range(1, 11)]
    # A1111: female, male, male, male, female, ... ; equal neighbours merged.
    assert schedule("[fe|||]male") == [(1, "female"), (4, "male"), (5, "female"), (8, "male"), (9, "female"), (10, "male")]


def test_readme_example_from_a1111():
    prompt = (
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][ in background:0.25] [shoddy:masterful:0.5]"
    )
    assert schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_from_empty_to_removes_text_after_when():
    assert schedule("a [b::0.6] c") == [(6, "a b c"), (10, "a  c")]
    assert schedule("a [b::4] c") == [(4, "a b c"), (10, "a  c")]


def test_when_with_decimal_point_is_a_fraction_without_is_a_step():
    assert schedule("[a:b:1]") == [(1, "a"), (10, "b")]
    assert schedule("[a:b:1.0]") == [(10, "a")]  # 100 % of the steps: never switches
    assert schedule("[a:b:0.3]", 20) == [(6, "a"), (20, "b")]
    assert schedule("[a:b:7]", 20) == [(7, "a"), (20, "b")]


def test_old_scheduling_treats_values_below_one_as_fractions():
    assert schedule("[a:b:1.0]", use_old_scheduling=True) == [(1, "a"), (10, "b")]
    assert schedule("[a:b:0.5]", use_old_scheduling=True) == [(5, "a"), (10, "b")]
    assert schedule("[a:b:2.5]", use_old_scheduling=True) == [(2, "a"), (10, "b")]


def test_hires_pass_continues_the_timeline_of_the_first_pass():
    # A1111 doctests with 10 base steps and 10 hires steps.
    assert schedule("a [b:.5] c", 10, hires_steps=10) == [(10, "a b c")]
    assert schedule("a [b:1.5] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert schedule("[a:b:13]", 10, hires_steps=20) == [(3, "a"), (20, "b")]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("[a:b:20]", [(10, "a")]),
        ("[a:b:0]", [(10, "b")]),
        ("[a:b:-3]", [(10, "b")]),
        ("[a:b:+2]", [(2, "a"), (10, "b")]),
        ("[a:b:2e0]", [(2, "a"), (10, "b")]),
        ("[a:b:1e400]", [(10, "a")]),
        ("[a:b:-1e400]", [(10, "b")]),
    ],
)
def test_when_out_of_range_is_clamped(prompt, expected):
    assert schedule(prompt) == expected


def test_edit_nests_inside_alternation_and_vice_versa():
    assert schedule("[[a|b]:c:2]", 4) == [(1, "a"), (2, "b"), (4, "c")]
    assert schedule("[x|[y:z:2]]", 4) == [(1, "x"), (2, "y"), (3, "x"), (4, "z")]
    assert schedule("[cat|dog] photo", 3) == [(1, "cat photo"), (2, "dog photo"), (3, "cat photo")]


def test_emphasis_and_escapes_are_left_for_the_attention_parser():
    assert schedule("[(a:1.2):[b]:3]") == [(3, "(a:1.2)"), (10, "[b]")]
    assert schedule(r"a \[b:3\]") == [(10, r"a \[b:3\]")]
    assert schedule(r"[a\:b:3]") == [(3, ""), (10, r"a\:b")]
    assert schedule(r"[a\|b] c [d:2]") == [(2, r"[a\|b] c "), (10, r"[a\|b] c d")]


@pytest.mark.parametrize(
    "prompt",
    [
        "a | b [c:2]",  # '|' outside any [..] is a syntax error in A1111's grammar
        "[a:2] ends with a backslash\\",
        "[a|b:2]",
        "[a:2] \\\nb",
        "(a|b) [c:2]",
        "[a|(b|c)] [d:2]",
        "[a|b [c:2]",
    ],
)
def test_prompts_a1111_rejects_are_used_verbatim(prompt):
    assert schedule(prompt) == [(10, prompt)]


@pytest.mark.parametrize("prompt", ["[a:b]", "[a:b:c:2]", "[a:2x]", "[a:]", "[a:(b]:2]", "[a:[b]]", "[a:(2)]"])
def test_invalid_edits_stay_literal(prompt):
    assert schedule(prompt) == [(10, prompt)]


def test_unclosed_bracket_around_valid_edit_keeps_the_edit():
    assert schedule("(a:[b:2]") == [(2, "(a:"), (10, "(a:b")]
    assert schedule("[x [b:2]") == [(2, "[x "), (10, "[x b")]


def test_edit_followed_by_stray_brackets_is_still_recognised():
    # A1111 with lark 1.1.2 resolves this ambiguous parse differently from run to run; we always
    # keep the edit, which is what the prompt author meant.
    assert schedule("[a:1]::") == [(1, "::"), (10, "a::")]
    assert schedule("x [a:2]))") == [(2, "x ))"), (10, "x a))")]


def test_deep_nesting_does_not_overflow():
    depth = 5000
    assert schedule("[" * depth + "a:1" + "]" * depth) == [
        (1, "[" * (depth - 1) + "]" * (depth - 1)),
        (10, "[" * (depth - 1) + "a" + "]" * (depth - 1)),
    ]
    unbalanced = "(" * 100_000 + "[a:2]"
    assert schedule(unbalanced) == [(2, "(" * 100_000), (10, "(" * 100_000 + "a")]


def test_non_positive_step_count_is_rejected():
    with pytest.raises(PromptSyntaxError):
        get_prompt_schedule("a", 0)
    with pytest.raises(ValueError):
        get_prompt_schedule("a", 10, hires_steps=0)


# --------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        (r"\(literal\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
    ],
)
def test_a1111_doctest_attention(prompt, expected):
    assert parse_prompt_attention(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("[a]", [("a", 1 / 1.1)]),
        ("[[a]] b", [("a", (1 / 1.1) * (1 / 1.1)), (" b", 1.0)]),
        ("((a))", [("a", 1.1 * 1.1)]),
        ("(a:1.3)", [("a", 1.3)]),
        ("(a: 0.5 ) b", [("a", 0.5), (" b", 1.0)]),
        ("(a:-1)", [("a", -1.0)]),
        ("(a:1.) (b:.5)", [("a ", 1.0), ("b", 0.5)]),
        ("((a:1.5))", [("a", 1.5 * 1.1)]),
        ("(a [b] c)", [("a ", 1.1), ("b", 1.1 * (1 / 1.1)), (" c", 1.1)]),
    ],
)
def test_attention_weights(prompt, expected):
    assert parse_prompt_attention(prompt) == [(text, pytest.approx(weight)) for text, weight in expected]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a) b] c", [("a) b] c", 1.0)]),
        ("a:1.2) b", [("a:1.2) b", 1.0)]),
        ("[a:1.2)]", [("a:1.2)", 1 / 1.1)]),
        ("(a:b)", [("a:b", 1.1)]),
        ("(a:1.2.3)", [("a:1.2.3", 1.1)]),
        (r"a\\b", [("a\\b", 1.0)]),
        (r"a\b", [("ab", 1.0)]),
        ("(a)\\", [("a", 1.1)]),
        ("{a}", [("{a}", 1.0)]),
    ],
)
def test_attention_tolerates_malformed_input(prompt, expected):
    assert parse_prompt_attention(prompt) == expected


@pytest.mark.parametrize("prompt", ["", "()", "[]", "(:1.5)", "\\"])
def test_attention_of_empty_content(prompt):
    assert parse_prompt_attention(prompt) == [("", 1.0)]


def test_break_splits_chunks():
    marker = (BREAK_MARKER, -1.0)
    assert parse_prompt_attention("a BREAK b") == [("a", 1.0), marker, ("b", 1.0)]
    assert parse_prompt_attention("a,BREAK,b") == [("a,", 1.0), marker, (",b", 1.0)]
    assert parse_prompt_attention("a\nBREAK\n(b)") == [("a", 1.0), marker, ("b", 1.1)]
    assert parse_prompt_attention("BREAK BREAK") == [marker, marker]
    assert parse_prompt_attention("(a BREAK b)") == [("a", 1.1), marker, ("b", 1.1)]


@pytest.mark.parametrize("prompt", ["a break b", "aBREAK b", "BREAKS", "a BREAK_b"])
def test_break_needs_the_uppercase_word(prompt):
    assert parse_prompt_attention(prompt) == [(prompt, 1.0)]


# --------------------------------------------------------------------------------------- network tags


def test_extract_lora_tag():
    assert extract_network_tags("a <lora:foo:0.8> b") == ("a  b", [NetworkTag(kind="lora", name="foo", args=("0.8",))])


def test_extract_several_tags_in_order():
    prompt = "<lora:x:0.5:1>cat, <hypernet:h> dog <lyco:y:1:unet=0.3:dyn=8>"
    text, tags = extract_network_tags(prompt)
    assert text == "cat,  dog "
    assert tags == [
        NetworkTag("lora", "x", ("0.5", "1")),
        NetworkTag("hypernet", "h", ()),
        NetworkTag("lyco", "y", ("1", "unet=0.3", "dyn=8")),
    ]
    assert tags[2].positional_args == ("1",)
    assert tags[2].named_args == {"unet": "0.3", "dyn": "8"}


def test_tags_inside_prompt_editing_are_removed_too():
    assert extract_network_tags("[<lora:a:1>x:y:3]") == ("[x:y:3]", [NetworkTag("lora", "a", ("1",))])


@pytest.mark.parametrize("prompt", ["<lora>", "a < b > c", "<lora:x", "<:x>", "<lora:>", "<lo ra:x>"])
def test_text_that_is_not_a_tag_is_kept(prompt):
    assert extract_network_tags(prompt) == (prompt, [])


def test_tag_with_empty_name_and_unicode_kind():
    assert extract_network_tags("<lora::1>") == ("", [NetworkTag("lora", "", ("1",))])
    assert extract_network_tags("<réseau:n>") == ("", [NetworkTag("réseau", "n", ())])


# ------------------------------------------------------------------------------------------------ fuzz

_SYNTAX_HEAVY_TEXT = st.lists(
    st.sampled_from(list("[]():|\\<>=,. \n\tab0159-+eE") + ["BREAK", "lora", "0.5", "AND"]), max_size=40
).map("".join)
_ANY_TEXT = st.one_of(_SYNTAX_HEAVY_TEXT, st.text(max_size=60))


@settings(max_examples=400, deadline=None)
@given(prompt=_ANY_TEXT, steps=st.integers(min_value=1, max_value=40), hires=st.none() | st.integers(1, 30), old=st.booleans())
def test_fuzz_schedule_never_raises_and_is_well_formed(prompt, steps, hires, old):
    entries = get_prompt_schedule(prompt, steps, hires_steps=hires, use_old_scheduling=old)
    ends = [entry.end_at_step for entry in entries]
    assert ends == sorted(set(ends))
    assert ends[0] >= 1 and ends[-1] == (hires if hires is not None and not old else steps)
    assert all(left.text != right.text for left, right in zip(entries, entries[1:]))
    if not set(prompt) & set("[]|\\"):
        assert [entry.text for entry in entries] == [prompt]


@settings(max_examples=400, deadline=None)
@given(prompt=_ANY_TEXT)
def test_fuzz_attention_never_raises_and_keeps_plain_text(prompt):
    chunks = parse_prompt_attention(prompt)
    assert chunks
    assert all(isinstance(text, str) and isinstance(weight, float) for text, weight in chunks)
    if not set(prompt) & set("()[]\\") and "BREAK" not in prompt:
        assert chunks == [(prompt, 1.0)]


@settings(max_examples=400, deadline=None)
@given(prompt=_ANY_TEXT)
def test_fuzz_network_tags_never_raise(prompt):
    text, tags = extract_network_tags(prompt)
    assert len(tags) == len(re.findall(r"<\w+:[^>]+>", prompt))
    assert len(text) <= len(prompt)


def test_module_imports_without_torch():
    module_path = Path(__file__).resolve().parents[2] / "webui" / "generation" / "prompt_syntax.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('prompt_syntax', {str(module_path)!r})\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['prompt_syntax'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert 'torch' not in sys.modules and 'lark' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
