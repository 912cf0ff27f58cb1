"""Wildcards / dynamic prompts: `__colors__` files, `{red|blue}` variants, random and combinatorial modes.

Random mode draws each image's prompt with a generator seeded by that image's own seed, so an image is
reproducible from its seed alone (and drawing it again by itself gives the same prompt). Combinatorial mode
draws one image per combination, at most "Combinatorial: at most this many images" of them. Each image's
infotext holds its expanded prompt and the template ("Template: ...").

Wildcard files: `<data>/wildcards/<name>.txt` (yours; a sub-folder gives `__sub/name__`) and, when no such
file exists, this extension's bundled `wildcards/` folder (toy-world colors, shapes and backgrounds). One
option per line; empty lines and lines starting with `#` are skipped.
"""

from __future__ import annotations

import random
from pathlib import Path

from webui.extensions import api

from . import syntax

RANDOM, COMBINATORIAL = "random", "combinatorial"
TEMPLATE_FIELD = "Template"
SEED_RANGE = 2**32 - 1  # image i of a job has seed (seed + i) modulo this, as the app counts them


def read_lines(folders: list[Path], name: str) -> list[str] | None:
    """The options of wildcard `name` from the first folder holding `<name>.txt`; None when none does."""
    for folder in folders:
        path = (folder / f"{name}.txt")
        try:
            inside = path.resolve().is_relative_to(folder.resolve())
        except OSError:
            continue
        if inside and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return None


def make_lookup(folders: list[Path]) -> syntax.Lookup:
    """Wildcard files read once per expansion (edits apply to the next job)."""
    cache: dict[str, list[str] | None] = {}

    def lookup(name: str) -> list[str] | None:
        if name not in cache:
            cache[name] = read_lines(folders, name)
        return cache[name]

    return lookup


def expand(template: str, mode: str, seed: int, count: int, max_combinations: int,
           folders: list[Path]) -> list[str] | None:
    """One prompt per image, or None when the template holds no wildcard syntax."""
    lookup = make_lookup(folders)
    if not syntax.has_syntax(template, lookup):
        return None
    nodes = syntax.parse(template, lookup)
    if mode == COMBINATORIAL:
        prompts = []
        for prompt in syntax.combinations(nodes, lookup):
            prompts.append(prompt)
            if len(prompts) >= max_combinations:
                break
        return prompts
    return [syntax.draw(nodes, random.Random((seed + index) % SEED_RANGE), lookup) for index in range(count)]


def setup(ext: api.ExtensionSetup) -> None:
    ext.add_setting(api.Setting("mode", "Wildcards mode", RANDOM, choices=(RANDOM, COMBINATORIAL),
                                help="random: each image draws its own prompt, seeded by its seed; "
                                     "combinatorial: one image per combination"))
    ext.add_setting(api.Setting("max_combinations", "Combinatorial: at most this many images", 32,
                                minimum=1, maximum=1000))
    folders = [ext.user_folder("wildcards"), ext.folder / "wildcards"]

    def expand_prompt(context: api.PromptExpansion) -> list[str] | None:
        return expand(context.prompt, str(ext.setting("mode")), context.seed, context.image_count,
                      int(ext.setting("max_combinations")), folders)

    def record_template(context: api.ImageReady) -> None:
        template = context.request.prompt
        if context.prompt != template and syntax.has_syntax(template, make_lookup(folders)):
            context.set_parameter(TEMPLATE_FIELD, template)
        return None

    ext.on_prompt_expansion(expand_prompt)
    ext.on_after_image(record_template)
