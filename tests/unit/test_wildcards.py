"""The shipped wildcards extension (extensions-builtin/wildcards), loaded through the real loader and called
through the hooks it registers: files, nested variants, random mode reproducible by seed, combinatorial
count, untouched prompts, and the infotext template field."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from webui.extensions import api
from webui.extensions.loader import ExtensionSwitches, load_extensions
from webui.extensions.registry import LOADED, ExtensionRegistry
from webui.generation.requests import Txt2ImgRequest

BUILTIN = Path(__file__).resolve().parents[2] / "extensions-builtin"


@pytest.fixture
def wildcards(tmp_path):
    registry = ExtensionRegistry(api.API_VERSION)
    load_extensions(registry, [(BUILTIN, True)], ExtensionSwitches(tmp_path / "extensions.json"),
                    lambda record: api.ExtensionSetup(registry, record, tmp_path / "extension-data"))
    assert registry.records["wildcards"].state == LOADED, registry.records["wildcards"].problem
    return registry, tmp_path / "wildcards"


def expand(wildcards, prompt: str, seed: int = 1, count: int = 1) -> list[str] | None:
    registry, _ = wildcards
    [row] = [row for row in registry.rows(api.PROMPT_EXPANSION) if row.extension == "wildcards"]
    request = Txt2ImgRequest(prompt=prompt, seed=seed)
    return registry.call_one(row, api.PromptExpansion(prompt, "", count, seed, request))


def set_mode(wildcards, mode: str, max_combinations: int = 32) -> None:
    registry, _ = wildcards
    registry.settings.set("wildcards", "mode", mode)
    registry.settings.set("wildcards", "max_combinations", max_combinations)


def test_a_prompt_without_the_syntax_is_untouched(wildcards):
    for prompt in ("a red circle on a blue background", "(emphasis:1.2) [from:to:5] <lora:x:1> a_b __nope__",
                   "an unclosed {brace", "snake_case__words"):
        assert expand(wildcards, prompt, count=3) is None


def test_bundled_wildcard_files_are_read(wildcards):
    colors = {"red", "blue", "green", "yellow", "purple", "orange"}
    prompts = expand(wildcards, "a __colors__ __shapes__", count=20)
    assert len(prompts) == 20
    for prompt in prompts:
        _, color, shape = prompt.split(" ")
        assert color in colors and shape in {"circle", "square", "triangle", "star"}
    assert len(set(prompts)) > 3  # different images draw different options


def test_the_users_wildcard_folder_comes_first_and_sub_folders_work(wildcards):
    _, folder = wildcards
    (folder / "animals").mkdir(parents=True)
    (folder / "colors.txt").write_text("# my colors\n\nteal\n", encoding="utf-8")
    (folder / "animals" / "cats.txt").write_text("tabby\n", encoding="utf-8")
    assert expand(wildcards, "__colors__ __animals/cats__", count=2) == ["teal tabby", "teal tabby"]


def test_a_wildcard_name_cannot_leave_its_folder(wildcards, tmp_path):
    (tmp_path / "secret.txt").write_text("leaked\n", encoding="utf-8")
    assert expand(wildcards, "__../secret__") is None


def test_variants_nest_and_wildcard_lines_expand_too(wildcards):
    prompts = set(expand(wildcards, "{red|{dark|light} blue} on a __backgrounds__", count=60))
    firsts = {prompt.split(" on a ")[0] for prompt in prompts}
    assert firsts == {"red", "dark blue", "light blue"}
    backgrounds = {prompt.split(" on a ")[1] for prompt in prompts}
    assert all("__" not in text and "{" not in text and text.endswith("background") for text in backgrounds)


def test_random_mode_is_reproducible_from_each_images_seed(wildcards):
    batch = expand(wildcards, "a {red|blue|green|yellow} {circle|square|star}", seed=100, count=6)
    assert batch == expand(wildcards, "a {red|blue|green|yellow} {circle|square|star}", seed=100, count=6)
    # Image 4 of the batch has seed 104: drawn alone with that seed it gets the same prompt.
    assert expand(wildcards, "a {red|blue|green|yellow} {circle|square|star}", seed=104, count=1) == [batch[4]]
    assert expand(wildcards, "a {red|blue|green|yellow} {circle|square|star}", seed=7, count=6) != batch


def test_pick_several_variants(wildcards):
    for prompt in expand(wildcards, "{2$$red|blue|green}", count=10):
        first, second = prompt.split(", ")
        assert first != second and {first, second} <= {"red", "blue", "green"}
    for prompt in expand(wildcards, "{1-3$$a|b|c}", count=10):
        assert 1 <= len(prompt.split(", ")) <= 3


def test_combinatorial_mode_lists_every_combination_up_to_the_cap(wildcards):
    set_mode(wildcards, "combinatorial")
    prompts = expand(wildcards, "a {red|blue} {circle|square|star}", count=1)
    assert len(prompts) == 6 and len(set(prompts)) == 6
    assert set(prompts) == {f"a {c} {s}" for c in ("red", "blue") for s in ("circle", "square", "star")}
    assert len(expand(wildcards, "{2$$a|b|c|d}")) == 6  # the pairs of four
    set_mode(wildcards, "combinatorial", max_combinations=4)
    assert len(expand(wildcards, "__colors__ __shapes__")) == 4  # 24 combinations, capped


def test_escaped_braces_stay_literal(wildcards):
    assert expand(wildcards, r"\{not|variants\} {a|b}", count=1)[0] in ("{not|variants} a", "{not|variants} b")


def test_each_image_records_the_template(wildcards):
    registry, _ = wildcards
    [row] = [row for row in registry.rows(api.AFTER_IMAGE) if row.extension == "wildcards"]
    added: dict = {}
    template = "a {red|blue} circle"
    context = api.ImageReady(Image.new("RGB", (8, 8)), 0, 5, "a red circle", "", Txt2ImgRequest(prompt=template),
                             {}, None, added)
    registry.call_one(row, context)
    assert added == {"Template": template}
    plain: dict = {}
    registry.call_one(row, api.ImageReady(Image.new("RGB", (8, 8)), 0, 5, "a red circle", "",
                                          Txt2ImgRequest(prompt="a red circle"), {}, None, plain))
    assert plain == {}
