"""The candidate check scores a model folder through the app's engine and names what each failing prompt got wrong."""

from __future__ import annotations

import pytest

from sdstudio_eval import candidate_check
from tools.default_model.caption_variants import Prompt


def test_failing_prompts_are_listed_with_the_attribute_that_came_out_wrong(default_model_folder) -> None:
    named = {"count": 1, "color": "red", "shape": "circle", "background": "blue"}
    rows = [
        ("prefilled", (Prompt("a red circle on a blue background", named),) * 2, 5000),
        # The default model never learnt hexagons (held out for the training methods): the shape must fail.
        ("unknown_shape", (Prompt("a red hexagon on a blue background", {**named, "shape": "hexagon"}),), 5000),
    ]
    results = candidate_check.check_model(default_model_folder, "cpu", rows)
    assert results["prefilled"]["correct"] == 2 and results["prefilled"]["failures"] == []
    assert results["prefilled"]["per_attribute"] == {name: 1.0 for name in named}
    failure, = results["unknown_shape"]["failures"]
    assert results["unknown_shape"]["correct"] == 0
    assert failure["prompt"] == "a red hexagon on a blue background"
    assert failure["wrong"]["shape"][0] == "hexagon" and failure["wrong"]["shape"][1] != "hexagon"


def test_a_folder_without_a_model_is_refused_with_a_reason(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        candidate_check.main(["--model", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "is not a diffusers model folder" in capsys.readouterr().err
