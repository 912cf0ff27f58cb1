"""The X/Y/Z axis table: each axis changes the request the way an A1111 user expects."""

from __future__ import annotations

import pytest

from webui.generation.requests import Txt2ImgRequest
from webui.xyz.axes import (
    CHECKPOINT_COST,
    AxisChoices,
    AxisOption,
    AxisRegistry,
    default_axis_registry,
    resolve_axis_values,
    set_field,
)
from webui.xyz.ranges import AxisValueError

CHOICES = AxisChoices(
    checkpoints=("sd15/dreamshaper [0123456789]", "realistic [abcdef0123]"),
    vaes=("vae-ft-mse.safetensors",),
    loras=("FolkCostume", "detail_tweaker"),
    styles=("Cinematic", "Watercolor", "Noir"),
    hires_upscalers=("Latent", "Latent (nearest)", "Lanczos"),
)


def resolve(label: str, text: str, choices: AxisChoices = CHOICES) -> list:
    registry = default_axis_registry()
    return resolve_axis_values(registry.get(label), text, f"X axis ({label})", choices)


def apply_all(label: str, text: str, request: Txt2ImgRequest, choices: AxisChoices = CHOICES) -> list[Txt2ImgRequest]:
    option = default_axis_registry().get(label)
    return [option.apply(request, value) for value in resolve(label, text, choices)]


BASE = Txt2ImgRequest(prompt="a cat in a hat", negative_prompt="blurry cat", width=512, height=512)


@pytest.mark.parametrize(
    ("label", "text", "field", "expected"),
    [
        ("Seed", "1, 5-6", "seed", [1, 5, 6]),
        ("Var. seed", "7, 8", "subseed", [7, 8]),
        ("Var. strength", "0-1 [3]", "subseed_strength", [0.0, 0.5, 1.0]),
        ("Steps", "10-30 (+10)", "steps", [10, 20, 30]),
        ("CFG Scale", "3.5, 7", "cfg_scale", [3.5, 7.0]),
        ("Clip skip", "1-2", "clip_skip", [1, 2]),
        ("Denoising", "0.25, 0.75", "denoising_strength", [0.25, 0.75]),
    ],
)
def test_numeric_axes_set_their_request_field(label: str, text: str, field: str, expected: list) -> None:
    requests = apply_all(label, text, BASE)
    assert [getattr(request, field) for request in requests] == expected
    # Nothing else changes.
    assert all(request.prompt == BASE.prompt and request.width == 512 for request in requests)


def test_hires_axes_turn_hires_fix_on() -> None:
    steps = apply_all("Hires steps", "0, 15", BASE)
    assert [(request.hr_second_pass_steps, request.enable_hr) for request in steps] == [(0, True), (15, True)]
    upscalers = apply_all("Hires upscaler", "lanczos, latent", BASE)
    assert [(request.hr_upscaler, request.enable_hr) for request in upscalers] == [("Lanczos", True), ("Latent", True)]


def test_nothing_axis_leaves_the_request_alone() -> None:
    registry = default_axis_registry()
    option = registry.get("Nothing")
    assert option.apply(BASE, None) == BASE
    assert registry.get("") is option


def test_size_axis_sets_width_and_height() -> None:
    requests = apply_all("Size", "512x768, 640 X 384", BASE)
    assert [(request.width, request.height) for request in requests] == [(512, 768), (640, 384)]
    with pytest.raises(AxisValueError, match=r"^X axis \(Size\): '512' is not WIDTHxHEIGHT"):
        resolve("Size", "512")


def test_number_axes_refuse_values_out_of_range() -> None:
    with pytest.raises(AxisValueError, match="Denoising.*1.5 is outside"):
        resolve("Denoising", "0.5, 1.5")
    with pytest.raises(AxisValueError, match="Clip skip.*13 is outside"):
        resolve("Clip skip", "12-13")
    with pytest.raises(AxisValueError, match="Steps.*0 is outside"):
        resolve("Steps", "0-2")


def test_prompt_search_replace_replaces_in_both_prompts() -> None:
    requests = apply_all("Prompt S/R", "cat, dog, red fox", BASE)
    assert [request.prompt for request in requests] == ["a cat in a hat", "a dog in a hat", "a red fox in a hat"]
    assert [request.negative_prompt for request in requests] == ["blurry cat", "blurry dog", "blurry red fox"]


def test_prompt_search_string_found_only_in_negative_prompt_is_enough() -> None:
    request = Txt2ImgRequest(prompt="a house", negative_prompt="lowres")
    assert [r.negative_prompt for r in apply_all("Prompt S/R", "lowres, jpeg", request)] == ["lowres", "jpeg"]


def test_prompt_search_string_missing_is_an_error() -> None:
    with pytest.raises(AxisValueError, match="Prompt S/R: 'horse' is not in the prompt or the negative prompt"):
        apply_all("Prompt S/R", "horse, dog", BASE)


def test_prompt_order_makes_every_permutation() -> None:
    request = Txt2ImgRequest(prompt="red, big, cat")
    prompts = [r.prompt for r in apply_all("Prompt order", "red, big, cat", request)]
    assert len(prompts) == 6
    assert set(prompts) == {
        "red, big, cat", "red, cat, big", "big, red, cat", "big, cat, red", "cat, red, big", "cat, big, red",
    }
    assert prompts[0] == "red, big, cat"  # the first permutation is the order typed


def test_prompt_order_fragment_missing_is_an_error() -> None:
    with pytest.raises(AxisValueError, match="Prompt order: 'dog' is not in the prompt"):
        apply_all("Prompt order", "cat, dog", BASE)


def test_sampler_axis_matches_case_and_aliases_and_canonicalises() -> None:
    assert resolve("Sampler", "euler a, DPM++ 2M, k_dpmpp_2m_sde") == ["Euler a", "DPM++ 2M", "DPM++ 2M SDE"]
    requests = apply_all("Sampler", "euler", BASE)
    assert requests[0].sampler_name == "Euler"


def test_unknown_choice_lists_the_valid_values() -> None:
    with pytest.raises(AxisValueError) as raised:
        resolve("Sampler", "Euler, Warp drive")
    message = str(raised.value)
    assert "'Warp drive'" in message
    assert "Euler a" in message and "DPM++ 2M" in message
    with pytest.raises(AxisValueError, match="valid values: Automatic, None, vae-ft-mse.safetensors"):
        resolve("VAE", "kl-f8")


def test_schedule_type_axis_accepts_internal_names() -> None:
    assert resolve("Schedule type", "karras, sgm_uniform, Automatic") == ["Karras", "SGM Uniform", "Automatic"]
    assert apply_all("Schedule type", "exponential", BASE)[0].scheduler == "Exponential"


def test_checkpoint_matches_title_name_or_hash() -> None:
    values = resolve("Checkpoint name", "realistic, SD15/DREAMSHAPER [0123456789], dreamshaper, abcdef0123")
    assert values == [
        "realistic [abcdef0123]", "sd15/dreamshaper [0123456789]", "sd15/dreamshaper [0123456789]",
        "realistic [abcdef0123]",
    ]
    assert apply_all("Checkpoint name", "realistic", BASE)[0].checkpoint == "realistic [abcdef0123]"
    with pytest.raises(AxisValueError, match="unknown value 'missing'"):
        resolve("Checkpoint name", "missing")


def test_checkpoint_legend_drops_the_hash() -> None:
    option = default_axis_registry().get("Checkpoint name")
    assert option.legend_text("sd15/dreamshaper [0123456789]") == "sd15/dreamshaper"


def test_choice_axis_with_nothing_installed_says_so() -> None:
    with pytest.raises(AxisValueError, match="nothing installed"):
        resolve("LoRA name", "x", AxisChoices())


def test_vae_axis_offers_automatic_and_none() -> None:
    assert [r.vae for r in apply_all("VAE", "automatic, NONE, vae-ft-mse.safetensors", BASE)] == [
        "Automatic", "None", "vae-ft-mse.safetensors",
    ]


def test_lora_weight_rewrites_the_first_tag_for_a_bare_number() -> None:
    request = Txt2ImgRequest(prompt="a girl <lora:FolkCostume:0.8>, <lora:detail_tweaker:1>")
    prompts = [r.prompt for r in apply_all("LoRA weight", "0, 0.5, 1", request)]
    assert prompts == [
        "a girl <lora:FolkCostume:0>, <lora:detail_tweaker:1>",
        "a girl <lora:FolkCostume:0.5>, <lora:detail_tweaker:1>",
        "a girl <lora:FolkCostume:1>, <lora:detail_tweaker:1>",
    ]


def test_lora_weight_with_a_name_targets_that_tag_and_expands_ranges() -> None:
    request = Txt2ImgRequest(prompt="a girl <lora:FolkCostume:0.8>, <lora:detail_tweaker:1>")
    prompts = [r.prompt for r in apply_all("LoRA weight", "detail_tweaker:0-1 [3]", request)]
    assert prompts == [
        "a girl <lora:FolkCostume:0.8>, <lora:detail_tweaker:0>",
        "a girl <lora:FolkCostume:0.8>, <lora:detail_tweaker:0.5>",
        "a girl <lora:FolkCostume:0.8>, <lora:detail_tweaker:1>",
    ]


def test_lora_weight_sets_both_multipliers_and_keeps_other_arguments() -> None:
    request = Txt2ImgRequest(prompt="<lora:a:0.8:0.6:16> <lora:b> <lora:c:unet=0.2:te=0.1>")
    option = default_axis_registry().get("LoRA weight")
    values = resolve("LoRA weight", "a:0.3, b:0.4, c:0.5")
    assert option.apply(request, values[0]).prompt.startswith("<lora:a:0.3:0.3:16> ")
    assert "<lora:b:0.4>" in option.apply(request, values[1]).prompt
    assert "<lora:c:0.5:unet=0.5:te=0.5>" in option.apply(request, values[2]).prompt


def test_lora_weight_errors_before_generation() -> None:
    with pytest.raises(AxisValueError, match="no <lora:name:weight> tag"):
        apply_all("LoRA weight", "0.5", BASE)
    with pytest.raises(AxisValueError, match="no <lora:other:...> tag; its LoRA tags are: FolkCostume"):
        apply_all("LoRA weight", "other:0.5", Txt2ImgRequest(prompt="<lora:FolkCostume:1>"))
    with pytest.raises(AxisValueError, match="not a weight"):
        resolve("LoRA weight", "heavy")


def test_lora_weight_legend_shows_the_name_when_given() -> None:
    option = default_axis_registry().get("LoRA weight")
    assert [option.legend_text(v) for v in resolve("LoRA weight", "0.25, x:1")] == ["0.25", "x:1"]


def test_lora_name_replaces_the_first_tag_or_appends_one() -> None:
    with_tag = Txt2ImgRequest(prompt="a girl <lora:FolkCostume:0.7>, <lora:other:1>")
    assert [r.prompt for r in apply_all("LoRA name", "detail_tweaker", with_tag)] == [
        "a girl <lora:detail_tweaker:0.7>, <lora:other:1>"
    ]
    assert [r.prompt for r in apply_all("LoRA name", "folkcostume", BASE)] == ["a cat in a hat <lora:FolkCostume:1>"]
    assert apply_all("LoRA name", "FolkCostume", Txt2ImgRequest(prompt=""))[0].prompt == "<lora:FolkCostume:1>"


def test_styles_axis_adds_one_or_several_styles() -> None:
    request = Txt2ImgRequest(styles=("Noir",))
    requests = apply_all("Styles", "cinematic, Watercolor|noir|Cinematic", request)
    assert [r.styles for r in requests] == [("Noir", "Cinematic"), ("Noir", "Watercolor", "Cinematic")]
    expected = r"\(Styles\): unknown style 'Sepia'; valid styles: Cinematic, Watercolor, Noir"
    with pytest.raises(AxisValueError, match=expected):
        resolve("Styles", "Cinematic|Sepia")


def test_choices_functions_offer_what_is_installed() -> None:
    registry = default_axis_registry()
    assert list(registry.get("LoRA name").choices(CHOICES)) == ["FolkCostume", "detail_tweaker"]
    assert list(registry.get("Styles").choices(CHOICES)) == ["Cinematic", "Watercolor", "Noir"]
    assert list(registry.get("Checkpoint name").choices(CHOICES)) == [
        "realistic [abcdef0123]", "sd15/dreamshaper [0123456789]",
    ]
    assert "Euler a" in registry.get("Sampler").choices(CHOICES)
    assert registry.get("Steps").choices is None


def test_costs_rank_checkpoint_then_vae_then_lora_name() -> None:
    registry = default_axis_registry()
    costs = {option.label: option.cost for option in registry}
    assert costs["Checkpoint name"] == CHECKPOINT_COST
    assert costs["Checkpoint name"] > costs["VAE"] > costs["LoRA name"] > costs["Steps"]
    assert max(costs.values()) == costs["Checkpoint name"]


def test_builtin_labels_follow_the_spec() -> None:
    labels = default_axis_registry().labels()
    assert labels[0] == "Nothing"
    for label in (
        "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Prompt S/R", "Prompt order", "Sampler",
        "Schedule type", "Checkpoint name", "VAE", "Clip skip", "Size", "Denoising", "Hires steps",
        "Hires upscaler", "LoRA weight", "LoRA name", "Styles",
    ):
        assert label in labels


def test_registry_register_and_refuse_duplicates() -> None:
    registry = default_axis_registry()
    eta = AxisOption("Eta", "float", set_field("extra"))
    registry.register(eta)
    assert registry.get("eta") is eta and "Eta" in registry and registry.labels()[-1] == "Eta"
    with pytest.raises(ValueError, match="already registered"):
        registry.register(AxisOption("STEPS", "int", set_field("steps")))
    with pytest.raises(ValueError, match="needs a choices function"):
        registry.register(AxisOption("Mood", "choice", set_field("extra")))
    # Registries are independent: a fresh one does not see the extension's axis.
    assert "Eta" not in default_axis_registry()
    with pytest.raises(AxisValueError, match="unknown X/Y/Z axis 'Warp'; available: Nothing, Seed"):
        registry.get("Warp")


def test_extension_axis_goes_through_the_same_parsing() -> None:
    tile = AxisOption("Tile", "int", lambda request, value: request.with_changes(extra={"tile": value}))
    registry = AxisRegistry([tile])
    option = registry.get("Tile")
    values = resolve_axis_values(option, "1-3", "X axis (Tile)", CHOICES)
    assert [option.apply(BASE, value).extra for value in values] == [{"tile": 1}, {"tile": 2}, {"tile": 3}]


def test_refiner_axes_set_the_refiner_and_its_switch() -> None:
    refined = apply_all("Refiner checkpoint", "realistic, None", BASE)
    assert [request.refiner_checkpoint for request in refined] == ["realistic [abcdef0123]", "None"]
    assert [r.validate().refiner_checkpoint for r in refined] == ["realistic [abcdef0123]", ""]
    assert [r.refiner_switch_at for r in apply_all("Refiner switch at", "0.5, 0.9", BASE)] == [0.5, 0.9]
    with pytest.raises(AxisValueError):
        resolve("Refiner switch at", "0, 0.5", CHOICES)
