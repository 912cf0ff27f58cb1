"""Prompt matrix (A1111's script of that name), written only against `webui.extensions.api`.

The prompt `a red circle|blue background|striped` has a fixed part (`a red circle`) and variable parts
(`blue background`, `striped`); the script makes one image for every combination of variable parts
(2^n images), each with its own prompt in its infotext, and a grid labelled with the parts each column
and row has (+) or lacks (-). Chosen in the Script dropdown or with `"script_name": "prompt matrix"`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from webui.extensions import api

TITLE = "Prompt matrix"
MAX_VARIABLE_PARTS = 6          # 64 images: the app's limit of images per request
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class MatrixValues:
    """The script's values, in A1111's argument order (put_at_start, different_seeds, prompt_type,
    variations_delimiter, margin_size)."""

    put_at_start: bool = api.script_field(False, "Put variable parts at start of prompt")
    different_seeds: bool = api.script_field(False, "Use different seed for each picture")
    prompt_type: str = api.script_field("positive", "Select prompt", choices=("positive", "negative"))
    variations_delimiter: str = api.script_field("comma", "Select joining char", choices=("comma", "space"))
    margin_size: int = api.script_field(0, "Grid margins (px)", minimum=0, maximum=500)


def combined_prompt(parts: list[str], mask: int, values: MatrixValues) -> str:
    """The fixed part with the variable parts whose bit is set in `mask`."""
    chosen = [part for index, part in enumerate(parts[1:]) if mask & (1 << index)]
    joined = [*chosen, parts[0]] if values.put_at_start else [parts[0], *chosen]
    return (", " if values.variations_delimiter == "comma" else " ").join(item for item in joined if item)


def axis_labels(parts: list[str], bits: range, count: int) -> list[str]:
    """One label per column (or row): each variable part of this axis, + when used, - when not."""
    return [", ".join(("+ " if index & (1 << (bit - bits.start)) else "- ") + parts[bit + 1] for bit in bits)
            for index in range(count)]


def run(context: api.ScriptContext) -> api.ScriptResult:
    values: MatrixValues = context.values
    request = context.request
    source = request.prompt if values.prompt_type == "positive" else request.negative_prompt
    parts = [part.strip() for part in source.split("|")]
    variable = len(parts) - 1
    if variable > MAX_VARIABLE_PARTS:
        raise api.ExtensionError(f"{variable} variable parts make {2 ** variable} images; at most "
                                 f"{MAX_VARIABLE_PARTS} parts ({2 ** MAX_VARIABLE_PARTS} images) are allowed")
    seed = request.seed if request.seed != -1 else random.randint(0, MAX_SEED)
    column_bits = range(0, (variable + 1) // 2)           # the first half of the parts vary along the columns
    row_bits = range(column_bits.stop, variable)
    columns, rows = 1 << len(column_bits), 1 << len(row_bits)
    images, infotexts = [], []
    for mask in range(columns * rows):
        if context.interrupted:
            break
        context.set_message(f"Prompt matrix: image {mask + 1} of {columns * rows}")
        prompt = combined_prompt(parts, mask, values)
        field = "prompt" if values.prompt_type == "positive" else "negative_prompt"
        one = request.with_changes(**{field: prompt}, batch_count=1, batch_size=1,
                                   seed=(seed + mask) % MAX_SEED if values.different_seeds else seed)
        outcome = context.generate(one)
        images.extend(outcome.images[:1])
        infotexts.extend(outcome.infotexts[:1])
    grid = None
    if images:
        grid = api.labelled_grid(images, columns, axis_labels(parts, column_bits, columns) if column_bits else [],
                                 axis_labels(parts, row_bits, rows) if row_bits else [], margin=values.margin_size)
    return api.ScriptResult(images, infotexts, grid)


def setup(ext: api.ExtensionSetup) -> None:
    ext.add_script(TITLE, MatrixValues, run)
