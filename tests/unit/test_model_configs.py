"""The shipped SD1/SD2/SDXL/SD3.5 configs must rebuild the real architectures and tokenizers offline.

Reference values are published figures, not numbers read back from our own files:
parameter counts as reported for the hub models (e.g. diffusers' ``num_parameters``
docstring gives 859,520,964 for the SD1.5 UNet), and token ids as produced by CLIP's
reference tokenizer in other projects' tests.

The pipelines are assembled once, in a fresh interpreter with the hub switched off
(``HF_HUB_OFFLINE=1``, an empty HF cache, an unreachable proxy), by running this file
as a script; the tests assert on the facts it reports.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if __name__ == "__main__":  # run as the offline probe: make `webui` importable
    sys.path.insert(0, str(REPO_ROOT))

from webui.models.families import family_named, family_names  # noqa: E402
from webui.models.model_configs import (  # noqa: E402
    component_names,
    config_dir,
    load_component_config,
    load_model_index,
    load_tokenizers,
    tokenizer_folders,
)

FAMILIES = tuple(sorted(family_names()))  # ("flux", "sd1", "sd2", "sd3", "sdxl", "sdxl_refiner")
START, END = 49406, 49407
EXCLAMATION_ID = 0  # "!" is the first byte character, the pad token of OpenCLIP encoders
CLIP_LENGTH = 77

EXPECTED_COMPONENTS = {
    "sd1": ("scheduler", "text_encoder", "tokenizer", "unet", "vae"),
    "sd2": ("scheduler", "text_encoder", "tokenizer", "unet", "vae"),
    "sdxl": ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"),
    "sd3": ("scheduler", "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
            "tokenizer_3", "transformer", "vae"),
    "flux": ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae"),
    "sdxl_refiner": ("scheduler", "text_encoder_2", "tokenizer_2", "unet", "vae"),
}

# FLUX.1-dev's transformer and autoencoder as the Hugging Face pages of black-forest-labs/FLUX.1-dev count
# their safetensors ("12B params": 11,901,408,320; ae: 83,819,683).
FLUX_DEV_TRANSFORMER, FLUX_VAE = 11_901_408_320, 83_819_683

# Published parameter counts of the original models' components.
PUBLISHED_PARAMETER_COUNTS = {
    ("sd1", "unet"): 859_520_964,
    ("sd1", "vae"): 83_653_863,
    ("sd1", "text_encoder"): 123_060_480,
    ("sd2", "unet"): 865_910_724,
    ("sd2", "vae"): 83_653_863,
    ("sd2", "text_encoder"): 340_387_840,
    ("sdxl", "unet"): 2_567_463_684,
    ("sdxl", "vae"): 83_653_863,
    ("sdxl", "text_encoder"): 123_060_480,
    ("sdxl", "text_encoder_2"): 694_659_840,
    # FLUX.1-dev as diffusers builds black-forest-labs' published configs ("12 billion parameters").
    ("flux", "transformer"): FLUX_DEV_TRANSFORMER,
    ("flux", "vae"): FLUX_VAE,
    ("flux", "text_encoder"): 123_060_480,  # CLIP ViT-L/14's text tower, as SD1's
}

# Token ids from CLIP's reference tokenizer (published in other projects' test suites).
KNOWN_ENCODINGS = {
    "a photo of a cat": [START, 320, 1125, 539, 320, 2368, END],
    "a photo of a dog": [START, 320, 1125, 539, 320, 1929, END],
    "A red car, driving FAST!!": [START, 320, 736, 1615, 267, 4161, 1953, 748, END],
    "a red car beside a tree": [START, 320, 736, 1615, 13519, 320, 2677, END],
    "Hello, world!": [START, 3306, 267, 1002, 256, END],
    "don't stop 42 times": [START, 847, 713, 1691, 275, 273, 1661, END],
    # open_clip's output quoted in huggingface/diffusers#4153: "!" typed in a prompt stays an
    # ordinary word even for the tokenizers that pad with "!".
    "! !! !!!": [START, 256, 748, 995, END],
    "": [START, END],
}

# (family, tokenizer index) -> id the prompt is padded with.
TOKENIZER_PAD_IDS = {
    ("sd1", 0): END,
    ("sd2", 0): EXCLAMATION_ID,
    ("sdxl", 0): END,
    ("sdxl", 1): EXCLAMATION_ID,
    ("sd3", 0): END,             # SD3's CLIP-L pads like SDXL's first encoder,
    ("sd3", 1): EXCLAMATION_ID,  # its OpenCLIP bigG like SDXL's second
    ("flux", 0): END,            # Flux's CLIP-L is SD3's tokenizer files
    ("sdxl_refiner", 0): EXCLAMATION_ID,  # the refiner's only encoder is SDXL's second
}

# Values that change outputs without changing any tensor shape, as the built components
# see them (diffusers/transformers defaults filled in).
OUTPUT_AFFECTING_VALUES = {
    "sd1": [
        ("scheduler", "prediction_type", "epsilon"),
        ("scheduler", "beta_schedule", "scaled_linear"),
        ("scheduler", "steps_offset", 1),
        ("vae", "scaling_factor", 0.18215),
        ("text_encoder", "hidden_act", "quick_gelu"),
        ("unet", "use_linear_projection", False),
        ("unet", "upcast_attention", False),
        ("unet", "sample_size", 64),
    ],
    "sd2": [
        ("scheduler", "prediction_type", "v_prediction"),
        ("scheduler", "beta_schedule", "scaled_linear"),
        ("vae", "scaling_factor", 0.18215),
        ("text_encoder", "hidden_act", "gelu"),
        ("unet", "use_linear_projection", True),
        ("unet", "upcast_attention", True),
        ("unet", "attention_head_dim", [5, 10, 20, 20]),
        ("unet", "sample_size", 96),
    ],
    "sdxl": [
        ("scheduler", "prediction_type", "epsilon"),
        ("scheduler", "timestep_spacing", "leading"),
        ("vae", "scaling_factor", 0.13025),
        ("vae", "force_upcast", True),
        ("text_encoder", "hidden_act", "quick_gelu"),
        ("text_encoder_2", "hidden_act", "gelu"),
        ("unet", "use_linear_projection", True),
        ("unet", "addition_embed_type", "text_time"),
        ("unet", "addition_time_embed_dim", 256),
        ("unet", "sample_size", 128),
    ],
    "flux": [
        ("scheduler", "shift", 3.0),
        ("scheduler", "use_dynamic_shifting", True),
        ("scheduler", "base_shift", 0.5),
        ("scheduler", "max_shift", 1.15),
        ("vae", "scaling_factor", 0.3611),
        ("vae", "shift_factor", 0.1159),
        ("vae", "latent_channels", 16),
        ("text_encoder", "hidden_act", "quick_gelu"),
        ("text_encoder_2", "feed_forward_proj", "gated-gelu"),
        ("transformer", "guidance_embeds", True),
        ("transformer", "axes_dims_rope", [16, 56, 56]),
    ],
    "sdxl_refiner": [
        ("scheduler", "prediction_type", "epsilon"),
        ("vae", "scaling_factor", 0.13025),
        ("text_encoder_2", "hidden_act", "gelu"),
        ("unet", "use_linear_projection", True),
        ("unet", "addition_embed_type", "text_time"),
        ("unet", "addition_time_embed_dim", 256),
        ("unet", "cross_attention_dim", 1280),
        ("unet", "projection_class_embeddings_input_dim", 1280 + 5 * 256),  # pooled bigG + 5 time ids
    ],
    "sd3": [
        ("scheduler", "shift", 3.0),
        ("scheduler", "use_dynamic_shifting", False),
        ("vae", "scaling_factor", 1.5305),
        ("vae", "shift_factor", 0.0609),
        ("vae", "latent_channels", 16),
        ("text_encoder", "hidden_act", "quick_gelu"),
        ("text_encoder_2", "hidden_act", "gelu"),
        ("text_encoder_3", "feed_forward_proj", "gated-gelu"),
        ("transformer", "qk_norm", "rms_norm"),
        ("transformer", "dual_attention_layers", list(range(13))),
    ],
}


def build_meta_component(family: str, name: str) -> Any:
    """Instantiate one component from its shipped config, weights on the meta device."""
    from accelerate import init_empty_weights

    library, class_name = load_model_index(family)[name]
    component_class = getattr(importlib.import_module(library), class_name)
    folder = str(config_dir(family))
    if name.startswith("tokenizer"):  # where the family keeps them (Flux: SD3's files)
        return component_class.from_pretrained(str(family_named(family).shipped_tokenizer_folder(name)),
                                               local_files_only=True)
    if name == "scheduler":
        return component_class.from_pretrained(folder, subfolder=name, local_files_only=True)
    with init_empty_weights():
        if library == "diffusers":
            return component_class.from_config(component_class.load_config(folder, subfolder=name, local_files_only=True))
        config = component_class.config_class.from_pretrained(folder, subfolder=name, local_files_only=True)
        return component_class(config)


def describe_component(component: Any) -> dict[str, Any]:
    """JSON-safe facts about one built component."""
    facts: dict[str, Any] = {"class": type(component).__name__}
    if hasattr(component, "parameters"):
        parameters = list(component.parameters())
        facts["parameters"] = sum(parameter.numel() for parameter in parameters)
        facts["all_on_meta"] = all(parameter.device.type == "meta" for parameter in parameters)
    config = getattr(component, "config", None)
    if config is not None:
        facts["config"] = json.loads(json.dumps(config if isinstance(config, dict) else config.to_dict(), default=str))
    if hasattr(component, "model_max_length"):
        facts["model_max_length"] = component.model_max_length
        facts["pad_token_id"] = component.pad_token_id
    return facts


def describe_offline_skeletons() -> dict[str, Any]:
    """Assemble every family's pipeline from ``config_dir`` (meta weights) and report what was built."""
    import diffusers

    report: dict[str, Any] = {}
    for family in FAMILIES:
        folder = str(config_dir(family))
        index = diffusers.DiffusionPipeline.load_config(folder, local_files_only=True)
        components = {name: build_meta_component(family, name) for name in component_names(family)}
        declared_empty = {name: None for name, spec in index.items() if isinstance(spec, list) and spec[0] is None}
        options = {name: value for name, value in index.items() if not name.startswith("_") and not isinstance(value, list)}
        pipeline = getattr(diffusers, index["_class_name"])(**components, **declared_empty, **options)
        report[family] = {
            "pipeline_class": type(pipeline).__name__,
            "is_stable_diffusion": isinstance(pipeline, diffusers.StableDiffusionPipeline),
            "is_stable_diffusion_xl": isinstance(pipeline, diffusers.StableDiffusionXLPipeline),
            "vae_scale_factor": pipeline.vae_scale_factor,
            "pipeline_config": json.loads(json.dumps(dict(pipeline.config), default=str)),
            "components": {name: describe_component(getattr(pipeline, name)) for name in components},
            "empty_components": sorted(name for name in declared_empty if getattr(pipeline, name, None) is None),
        }
    return report


@pytest.fixture(scope="module")
def offline_skeletons(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run this file as a script in a fresh interpreter that cannot reach the hub."""
    workdir = tmp_path_factory.mktemp("offline")
    hf_home = workdir / "hf-home"
    environment = dict(os.environ)
    environment.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(hf_home),
            "HTTP_PROXY": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9",
        }
    )
    environment.pop("PYTHONPATH", None)
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve())],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    hub_cache = hf_home / "hub"
    assert not hub_cache.exists() or not any(hub_cache.iterdir()), "something was fetched into the HF cache"
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_config_dir_rejects_unknown_family_and_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as excinfo:
        config_dir("sd9")
    for family in FAMILIES:
        assert family in str(excinfo.value)
    with pytest.raises(ValueError):
        load_tokenizers("SD1")


def test_load_component_config_rejects_components_the_family_lacks() -> None:
    with pytest.raises(ValueError, match="text_encoder_2"):
        load_component_config("sd1", "text_encoder_2")
    with pytest.raises(ValueError):
        load_component_config("sd1", "safety_checker")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_declares_exactly_the_components_a_single_file_pipeline_needs(family: str) -> None:
    assert component_names(family) == EXPECTED_COMPONENTS[family]
    for name in component_names(family):
        folder = (family_named(family).shipped_tokenizer_folder(name) if name.startswith("tokenizer")
                  else config_dir(family) / name)
        assert folder.is_dir()
        assert isinstance(load_component_config(family, name), dict)


def test_component_configs_are_the_parsed_files() -> None:
    unet = load_component_config("sd1", "unet")
    assert unet == json.loads((config_dir("sd1") / "unet" / "config.json").read_text())
    assert unet["_class_name"] == "UNet2DConditionModel"
    assert load_component_config("sdxl", "scheduler")["_class_name"] == "EulerDiscreteScheduler"
    assert load_component_config("sd2", "tokenizer")["model_max_length"] == CLIP_LENGTH


@pytest.mark.parametrize(("family", "tokenizer_index"), sorted(TOKENIZER_PAD_IDS))
def test_tokenizer_encodes_like_clip_and_pads_with_the_family_pad_token(family: str, tokenizer_index: int) -> None:
    tokenizer = load_tokenizers(family)[tokenizer_index]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == CLIP_LENGTH
    for prompt, expected_ids in KNOWN_ENCODINGS.items():
        assert tokenizer(prompt).input_ids == expected_ids, prompt

    padded = tokenizer("a photo of a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    pad_id = TOKENIZER_PAD_IDS[(family, tokenizer_index)]
    assert padded == KNOWN_ENCODINGS["a photo of a cat"] + [pad_id] * (CLIP_LENGTH - 7)
    assert tokenizer.pad_token_id == pad_id


def test_long_prompts_truncate_to_the_text_encoder_context() -> None:
    (tokenizer,) = load_tokenizers("sd1")
    ids = tokenizer("a photo of a cat " * 40, truncation=True, max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == CLIP_LENGTH
    assert ids[0] == START and ids[-1] == END


def test_tokenizer_count_per_family() -> None:
    assert [len(load_tokenizers(family)) for family in FAMILIES] == [2, 1, 1, 3, 2, 1]


def test_all_tokenizer_folders_share_one_vocabulary() -> None:
    folders = list(dict.fromkeys(folder for family in FAMILIES for folder in tokenizer_folders(family)
                                 if (folder / "vocab.json").is_file()))  # the CLIP ones (SD3's T5 has its own)
    assert len(folders) == 6  # Flux uses SD3's files and the SDXL refiner SDXL's: no further copies
    for file_name in ("vocab.json", "merges.txt"):
        contents = {(folder / file_name).read_bytes() for folder in folders}
        assert len(contents) == 1, file_name
    merges = (folders[0] / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version")
    assert len(merges) - 1 == 49152 - 256 - 2


@pytest.mark.parametrize(("family", "component"), sorted(PUBLISHED_PARAMETER_COUNTS))
def test_meta_built_components_have_the_published_parameter_counts(
    offline_skeletons: dict[str, Any], family: str, component: str
) -> None:
    facts = offline_skeletons[family]["components"][component]
    assert facts["all_on_meta"] is True
    assert facts["parameters"] == PUBLISHED_PARAMETER_COUNTS[(family, component)]


@pytest.mark.parametrize("family", FAMILIES)
def test_output_affecting_config_values(offline_skeletons: dict[str, Any], family: str) -> None:
    components = offline_skeletons[family]["components"]
    for component, key, expected in OUTPUT_AFFECTING_VALUES[family]:
        assert components[component]["config"][key] == expected, f"{family}/{component}.{key}"


def test_sd3_skeleton_assembles_offline_with_matching_widths(offline_skeletons: dict[str, Any]) -> None:
    built = offline_skeletons["sd3"]
    components = built["components"]
    assert built["pipeline_class"] == "StableDiffusion3Pipeline"
    assert sorted(components) == list(EXPECTED_COMPONENTS["sd3"])
    assert built["vae_scale_factor"] == 8
    transformer = components["transformer"]["config"]
    assert transformer["in_channels"] == components["vae"]["config"]["latent_channels"] == 16
    # The joint attention takes T5's width; the pooled input is both CLIP projections side by side.
    assert transformer["joint_attention_dim"] == components["text_encoder_3"]["config"]["d_model"] == 4096
    assert transformer["pooled_projection_dim"] == sum(
        components[name]["config"]["projection_dim"] for name in ("text_encoder", "text_encoder_2")) == 2048
    assert components["tokenizer"]["model_max_length"] == components["tokenizer_2"]["model_max_length"] == CLIP_LENGTH
    assert components["tokenizer_3"]["model_max_length"] == 256 and components["tokenizer_3"]["pad_token_id"] == 0
    assert components["text_encoder"]["class"] == components["text_encoder_2"]["class"] == "CLIPTextModelWithProjection"


def test_flux_skeleton_assembles_offline_with_matching_widths(offline_skeletons: dict[str, Any]) -> None:
    built = offline_skeletons["flux"]
    components = built["components"]
    assert built["pipeline_class"] == "FluxPipeline"
    assert sorted(components) == list(EXPECTED_COMPONENTS["flux"])
    assert built["vae_scale_factor"] == 8
    transformer = components["transformer"]["config"]
    # 2x2 patches of the 16 latent channels are packed into 64-wide tokens.
    assert transformer["in_channels"] == 4 * components["vae"]["config"]["latent_channels"] == 64
    assert transformer["joint_attention_dim"] == components["text_encoder_2"]["config"]["d_model"] == 4096
    assert transformer["pooled_projection_dim"] == components["text_encoder"]["config"]["hidden_size"] == 768
    assert sum(transformer["axes_dims_rope"]) == transformer["attention_head_dim"] == 128
    assert components["text_encoder"]["class"] == "CLIPTextModel"
    assert components["tokenizer"]["model_max_length"] == CLIP_LENGTH
    assert components["tokenizer_2"]["pad_token_id"] == 0


@pytest.mark.parametrize("family", [name for name in FAMILIES if "unet" in EXPECTED_COMPONENTS[name]])
def test_pipeline_skeleton_assembles_offline_from_the_config_folder(
    offline_skeletons: dict[str, Any], family: str
) -> None:
    built = offline_skeletons[family]
    components = built["components"]
    if family == "sdxl":
        assert built["is_stable_diffusion_xl"] is True
        assert built["pipeline_config"]["force_zeros_for_empty_prompt"] is True
    elif family == "sdxl_refiner":
        assert built["pipeline_class"] == "StableDiffusionXLImg2ImgPipeline"
        assert built["pipeline_config"]["requires_aesthetics_score"] is True
        assert built["empty_components"] == ["text_encoder", "tokenizer"]
    else:
        assert built["is_stable_diffusion"] is True
        assert built["empty_components"] == ["feature_extractor", "safety_checker"]
        assert built["pipeline_config"]["requires_safety_checker"] is False
    assert sorted(components) == list(EXPECTED_COMPONENTS[family])
    assert built["vae_scale_factor"] == 8

    unet = components["unet"]["config"]
    assert unet["in_channels"] == components["vae"]["config"]["latent_channels"] == 4
    # The UNet's cross-attention width must equal what the text encoder(s) emit.
    encoders = {"sdxl": ["text_encoder", "text_encoder_2"], "sdxl_refiner": ["text_encoder_2"]}.get(
        family, ["text_encoder"])
    assert unet["cross_attention_dim"] == sum(components[name]["config"]["hidden_size"] for name in encoders)
    if family == "sdxl":
        # Added conditioning: pooled bigG projection + 6 size/crop numbers embedded at 256 each.
        projection = components["text_encoder_2"]["config"]["projection_dim"]
        assert unet["projection_class_embeddings_input_dim"] == projection + 6 * unet["addition_time_embed_dim"]
    for name in components:
        if name.startswith("tokenizer"):
            assert components[name]["model_max_length"] == CLIP_LENGTH
    assert components[encoders[0]]["config"]["max_position_embeddings"] == CLIP_LENGTH


if __name__ == "__main__":
    print(json.dumps(describe_offline_skeletons()))
