"""The training-methods experiment's setup: prompt sets, plans, and how its table lands in docs/FIDELITY.md."""

from __future__ import annotations

import pytest

from sdstudio_eval import toy_world
from sdstudio_eval.fidelity_report import TRAINING_SECTION_TITLE, training_section, with_training_section
from sdstudio_eval.training_fidelity import (
    METHOD_KEYS,
    ConceptSetup,
    attribute_prompts,
    class_prompts,
    method_plan,
    subject_prompts,
    training_config,
)
from webui.training.config import load_preset


def test_subject_prompts_use_the_trigger_in_contexts_no_training_photo_shows():
    setup = ConceptSetup()
    photos = {(s.color, s.background, s.position) for s in setup.scenes()}
    prompts = subject_prompts(setup, 24)
    assert len(prompts) == 24 and all(setup.trigger in p.text and setup.shape not in p.text for p in prompts)
    for prompt in prompts:
        expected = prompt.expected
        assert (expected["color"], expected["background"], expected["position"]) not in photos
        assert "shape" not in expected  # subject fidelity judges the shape, prompt fidelity the rest


def test_attribute_prompts_add_one_unseen_attribute_and_class_prompts_never_name_the_trigger():
    setup = ConceptSetup()
    varied = [{k: v for k, v in p.expected.items() if k in ("count", "size", "texture")} for p in attribute_prompts(setup, 4)]
    assert varied == [{"count": 2, "size": "large"}, {"count": 3, "size": "large"},
                      {"count": 1, "size": "small"}, {"count": 1, "size": "large", "texture": "striped"}]
    for prompt in class_prompts(10):
        assert setup.trigger not in prompt.text and prompt.expected["shape"] in toy_world.BASE_SHAPES


def test_every_method_trains_from_the_default_models_preset_with_the_job_fields(tmp_path):
    setup = ConceptSetup()
    for key in METHOD_KEYS:
        plan = method_plan(key)
        config = training_config(plan, setup, tmp_path)
        preset = load_preset(plan.preset)
        assert plan.preset.startswith("toy_") and config.method == preset.method
        assert (config.resolution, config.unet_lr, config.save_every_n_epochs) == (preset.resolution, preset.unet_lr, 0)
        assert config.trigger_word == setup.trigger and config.dataset_dir == str(tmp_path)
    assert not training_config(method_plan("dreambooth_no_prior"), setup, tmp_path).with_prior_preservation
    with pytest.raises(ValueError, match="lora"):
        method_plan("hypernetwork")


def test_regenerating_either_report_keeps_the_other_ones_section():
    table = f"{TRAINING_SECTION_TITLE}\n\n| method | subject |\n| LoRA | 0.50 |\n"
    document = with_training_section("# Fidelity report\n\n## 3. Calibration\n", table)
    assert document.endswith(table) and document.startswith("# Fidelity report")
    assert training_section(document) == table
    regenerated = with_training_section("# Fidelity report\n\n## 3. New calibration\n", training_section(document))
    assert "New calibration" in regenerated and training_section(regenerated) == table
    assert training_section("# no table yet\n") is None
    assert with_training_section("# report\n", None) == "# report\n"


def test_a_new_table_replaces_the_old_section_4():
    document = with_training_section("# Fidelity report\n", f"{TRAINING_SECTION_TITLE}\n\nold table\n")
    updated = with_training_section(document, f"{TRAINING_SECTION_TITLE}\n\nnew table\n")
    assert "new table" in updated and "old table" not in updated and updated.count(TRAINING_SECTION_TITLE) == 1


def test_sections_after_the_training_table_survive_both_regenerations():
    from sdstudio_eval.fidelity_report import measured_sections

    later = "## 5. Toy ControlNet\n\ncontrol table\n"
    document = f"# Fidelity report\n\n## 3. Calibration\n\n{TRAINING_SECTION_TITLE}\n\nold table\n\n{later}"
    updated = with_training_section(document, f"{TRAINING_SECTION_TITLE}\n\nnew table\n")
    assert "new table" in updated and "old table" not in updated and updated.endswith(later)
    assert training_section(updated) == f"{TRAINING_SECTION_TITLE}\n\nnew table\n\n"
    regenerated = with_training_section("# Fidelity report\n\n## 3. New calibration\n", measured_sections(updated))
    assert "New calibration" in regenerated and "new table" in regenerated and regenerated.endswith(later)
