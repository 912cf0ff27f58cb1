"""The prompt-styles rows of the fidelity report: each row's prompts name what the row promises, and the table
reads correct/total per model."""

from __future__ import annotations

from collections import Counter

import pytest

from sdstudio_eval import prompt_sets, toy_world
from sdstudio_eval.fidelity_report import PromptStyleResult, load_prompt_styles, prompt_style_table
from webui.models.default_model import EXAMPLE_PROMPT, README_EXAMPLE_PROMPT
from webui.settings import PROJECT_ROOT


@pytest.fixture(scope="module")
def rows() -> dict[str, prompt_sets.PromptRow]:
    return {row.key: row for row in prompt_sets.prompt_rows(40)}


def test_rows_and_their_sizes(rows) -> None:
    assert list(rows) == ["full_grammar", "named_1", "named_2", "named_3", "held_out", "prefilled", "readme"]
    assert all(len(rows[key].prompts) == 40 for key in ("full_grammar", "named_1", "named_2", "named_3", "held_out"))
    assert len(rows["prefilled"].prompts) == len(rows["readme"].prompts) == prompt_sets.FIXED_PROMPT_SEEDS


def test_every_prompt_names_exactly_what_it_claims(rows) -> None:
    for row in rows.values():
        prompt_sets.check_prompts(row.prompts)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_named_rows_name_exactly_k_attributes_in_varied_combinations(rows, k) -> None:
    prompts = rows[f"named_{k}"].prompts
    assert all(len(toy_world.parse_prompt(p.text)) == k for p in prompts)
    combinations = Counter(frozenset(p.named) for p in prompts)
    assert len(combinations) >= min(3, k + 2)
    assert len({p.text for p in prompts}) > len(prompts) // 2


def test_full_grammar_row_is_the_evaluation_captions(rows) -> None:
    scenes = toy_world.evaluation_scenes(40)
    assert [p.text for p in rows["full_grammar"].prompts] == [toy_world.caption(s) for s in scenes]
    assert all(len(p.named) == len(toy_world.ATTRIBUTES) for p in rows["full_grammar"].prompts)


def test_held_out_row_uses_every_template_and_negative_prompts_on_half(rows) -> None:
    prompts = rows["held_out"].prompts
    patterns = [prompt_sets.template_pattern(t) for t in prompt_sets.HELD_OUT_TEMPLATES]
    used = {index for p in prompts for index, pattern in enumerate(patterns) if pattern.match(p.text)}
    assert used == set(range(len(patterns)))
    assert sum(bool(p.negative) for p in prompts) == len(prompts) // 2
    assert all({"shape", "background"} <= set(p.named) for p in prompts)


def test_fixed_prompts_are_the_ui_and_readme_examples(rows) -> None:
    assert {p.text for p in rows["prefilled"].prompts} == {EXAMPLE_PROMPT}
    assert {p.text for p in rows["readme"].prompts} == {README_EXAMPLE_PROMPT}
    assert dict(rows["prefilled"].prompts[0].named) == {"count": 1, "color": "red", "shape": "circle", "background": "blue"}
    assert README_EXAMPLE_PROMPT in (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")


def test_check_prompts_catches_a_wrong_claim() -> None:
    wrong = prompt_sets.Prompt("a red circle on a blue background", {"color": "red", "shape": "circle"})
    with pytest.raises(ValueError, match="names"):
        prompt_sets.check_prompts([wrong])
    with pytest.raises(ValueError, match="negative prompt"):
        prompt_sets.check_prompts([prompt_sets.Prompt("circles", {"shape": "circle"}, negative="blue background")])


def test_table_shows_correct_over_total_per_model(tmp_path) -> None:
    before = [PromptStyleResult("named_1", "naming 1 attribute", 40, 30, {"shape": 0.75, "all": 0.75})]
    after = [PromptStyleResult("named_1", "naming 1 attribute", 40, 39, {"shape": 0.975, "all": 0.975})]
    lines = prompt_style_table({"before": before, "after": after})
    assert lines[0] == "| prompt style | prompts | before | after |"
    assert lines[2] == "| naming 1 attribute | 40 | 30/40 (75.0 %) | 39/40 (97.5 %) |"
    path = tmp_path / "styles.json"
    path.write_text('[{"key": "named_1", "title": "naming 1 attribute", "prompts": 40, "correct": 39, '
                    '"per_attribute": {"all": 0.975}}]')
    assert load_prompt_styles(path)[0].fidelity == pytest.approx(0.975)
