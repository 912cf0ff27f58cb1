"""`ModelFamily`: everything that differs between model families (SD1, SD2, SDXL ...), behind one interface.

Code outside `webui/models/families/` never compares a family name; it asks the family: which diffusers
pipeline class runs a mode, which text encoders and tokenizers the pipeline has, whether the UNet is
conditioned on pooled text, how a LoRA's kohya names start, what a live preview's colours are. A new
family is one new file here (a subclass) and one line in `families/__init__.py`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from webui.models.formats.dit_lora import RowPart, converted_by_diffusers

MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "model_configs"

# Generation modes a family's pipeline classes are named for.
TXT2IMG, IMG2IMG, INPAINT = "txt2img", "img2img", "inpaint"


# Block names of diffusers' UNet, in the LoRA files of every UNet family.
UNET_LORA_MARKERS = ("down_blocks", "mid_block", "up_blocks")


@dataclass(frozen=True)
class LdmTextEncoder:
    """Where one text encoder sits in a single-file (LDM/SGM layout) checkpoint and how it converts."""

    component: str             # the diffusers component: "text_encoder", "text_encoder_2"
    prefix: str                # its tensors' name prefix in the single file
    kind: str                  # "clip" (OpenAI CLIP, transformers layout), "open_clip" (OpenCLIP layout) or
                               # "t5" (T5 encoder, transformers layout)
    with_projection: bool = False    # CLIPTextModelWithProjection (SDXL's second encoder: pooled output)
    legacy_key_fixup: bool = False   # SD1 files saved by old transformers lack the "text_model." level


class ModelFamily(ABC):
    """One model family. Subclasses set the class attributes and override what their family does differently;
    instances are stateless singletons (see `families/__init__.py`)."""

    name: ClassVar[str]                      # the id stored in records and job data: "sd1", "sd2", "sdxl"
    label: ClassVar[str]                     # what users read: "SD1.x"
    native_size: ClassVar[int]               # the side length the family was trained at
    preset_prefix: ClassVar[str]             # shipped training presets for it: webui/training/presets/<prefix>*.json
    # Pipeline component names, in encoder order (default: one CLIP encoder, as SD1/SD2).
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    tokenizers: ClassVar[tuple[str, ...]] = ("tokenizer",)
    pipeline_classes: ClassVar[Mapping[str, str]]  # mode -> diffusers pipeline class name
    # Options the family's pipelines are built with (e.g. the SDXL refiner's `requires_aesthetics_score`).
    pipeline_options: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    text_encoder_widths: ClassVar[tuple[int, ...]]  # hidden width of each text encoder (an embedding's vectors)
    cross_attention_width: ClassVar[int]     # the text features' width the UNet's cross-attention takes
    # SDXL-style conditioning: the UNet also takes the pooled text embedding and size/crop time ids.
    conditions_on_pooled_text: ClassVar[bool] = False
    # "Approx cheap" live preview: RGB weights per latent channel (least-squares fits for the family's VAE).
    preview_coefficients: ClassVar[tuple[tuple[float, float, float], ...]]
    # The text encoders of a single-file checkpoint, in `text_encoders` order.
    ldm_text_encoders: ClassVar[tuple[LdmTextEncoder, ...]]
    # kohya LoRA key prefixes per component, and what kohya writes as `ss_base_model_version`.
    kohya_lora_prefixes: ClassVar[Mapping[str, str]] = MappingProxyType({"unet": "lora_unet_",
                                                                          "text_encoder": "lora_te_"})
    kohya_base_model_version: ClassVar[str]
    kohya_is_v2: ClassVar[bool] = False   # kohya's `ss_v2` flag (SD2's OpenCLIP text encoder)
    # Whose module names kohya uses for this family's LoRAs: diffusers' ("diffusers") or the original
    # LDM/SGM code's ("sgm"); written as `modelspec.implementation`.
    lora_module_naming: ClassVar[str] = "diffusers"
    # The original code whose module names "sgm"-named LoRA files use (modelspec.implementation of such files).
    original_implementation: ClassVar[str] = "https://github.com/Stability-AI/generative-models"
    # LoRA key prefixes of the family's own files, (prefix, component, dotted), tried in order; empty = the SD
    # families' shared table (`lora_formats`: every family's kohya prefixes, `unet.`, `text_encoder*.` ...).
    lora_key_prefixes: ClassVar[tuple[tuple[str, str, bool], ...]] = ()
    # Substrings of LoRA layer names that files of this family have and other families' lack (which family a
    # file that fits no layer of the loaded model was made for, for the message); default: diffusers' UNet.
    lora_key_markers: ClassVar[tuple[str, ...]] = UNET_LORA_MARKERS
    # Substrings of LoRA keys in layouts the family's tables do not name but diffusers' converter for its pipeline
    # does (Flux: XLabs' ".processor."); such files are converted first (`readable_lora_state`).
    lora_layouts_diffusers_converts: ClassVar[tuple[str, ...]] = ()
    # The pipeline component that denoises ("unet", or "transformer" for DiT families), how a single file
    # stores it ("ldm_unet" or "sd3_mmdit": which diffusers converter reads it) and the latent channels.
    denoiser: ClassVar[str] = "unet"
    single_file_denoiser: ClassVar[str] = "ldm_unet"
    latent_channels: ClassVar[int] = 4
    # A1111's "Clip skip" applies to the family's prompt encoding (families without CLIP-only prompts lack it).
    uses_clip_skip: ClassVar[bool] = True
    # The CFG scale is an input of a guidance-distilled model (Flux.1 dev) instead of classifier-free guidance:
    # one denoiser pass per step, no negative prompt (Forge's "Distilled CFG Scale", the request's
    # `distilled_cfg_scale`). `pipeline_arguments` says what the pipeline call takes.
    distilled_guidance: ClassVar[bool] = False
    # Flow-matching models (SD3, Flux) sample along a shifted sigma schedule; the shift ("Shift") is a user setting.
    flow_matching: ClassVar[bool] = False
    # The scheduler class a freshly built pipeline starts with (the generation engine may swap it per sampler).
    scheduler_class: ClassVar[str] = "EulerDiscreteScheduler"
    # Text encoders a checkpoint may lack and still generate (the pipeline gets None for them).
    optional_text_encoders: ClassVar[tuple[str, ...]] = ()
    # Text encoders a checkpoint may leave out and the loader then reads from the text-encoder folder
    # (models/text_encoder, ComfyUI/Forge file names, most preferred first; globs allowed).
    separate_text_encoder_files: ClassVar[Mapping[str, tuple[str, ...]]] = MappingProxyType({})
    # A text encoder that reads the whole prompt once (T5), not in 77-token CLIP chunks: its component, its
    # tokenizer and how many tokens it reads (longer prompts are cut there and the user is told). None: every
    # text encoder reads CLIP chunks.
    sequence_text_encoder: ClassVar[str | None] = None
    sequence_tokenizer: ClassVar[str | None] = None
    sequence_max_tokens: ClassVar[int] = 0
    # The sampler a UI preselects for the family (flow-matching ones use webui.generation.samplers' flow table).
    default_sampler: ClassVar[str] = "DPM++ 2M"
    # The tensor a pipeline's step callback may hand back to change the pooled text embedding mid-run (SDXL's
    # "add_text_embeds"); None where the pipeline reads none back (see `pooled_denoiser_argument`).
    pooled_step_input: ClassVar[str | None] = None
    # The denoiser's keyword argument carrying the pooled text, for families whose pipelines take no pooled vector
    # back from the step callback (SD3, Flux: "pooled_projections"); a prompt schedule then switches it in the
    # denoiser call (webui.generation.pooled_switch). None: the callback's `pooled_step_input` does it, or no
    # pooled text.
    pooled_denoiser_argument: ClassVar[str | None] = None
    # Whether the pipelines repeat given `prompt_embeds` for `num_images_per_prompt` (SD1/SDXL do; SD3's
    # use given embeddings as they are).
    repeats_given_embeddings: ClassVar[bool] = True
    # VAE files a checkpoint may leave out and the loader then reads from the VAE folder (models/VAE; Flux's
    # `ae.safetensors`); empty: the checkpoint must bundle its VAE.
    separate_vae_files: ClassVar[tuple[str, ...]] = ()
    # Prefixes under which a single file bundles its VAE (LDM: `first_stage_model.`; ComfyUI's Flux: `vae.`).
    ldm_vae_prefixes: ClassVar[tuple[str, ...]] = ("first_stage_model.",)
    # -- training (webui/training asks these; defaults are the SD UNet families') --
    # What the denoiser learns: "noise_prediction" (DDPM epsilon / v, from the scheduler config) or
    # "flow_matching" (rectified flow: the velocity noise - latents, SD3/Flux).
    training_objective: ClassVar[str] = "noise_prediction"
    # The layout a trained LoRA is saved in: "kohya" (lora_unet_/lora_te_ names, `formats/kohya.py`) or
    # "diffusers" (PEFT `transformer.<path>.lora_A/B` keys with diffusers' `lora_adapter_metadata`).
    trained_lora_layout: ClassVar[str] = "kohya"
    # -- what other UIs map in this family's LoRAs (`formats/lora_loader_names.py`, the training key check) --
    # ComfyUI's names for each CLIP encoder's layer projections: prefixes before "text_model_<layer>" (kohya) or,
    # ending in ".", before "text_model.<layer>" (diffusers); T5 layers under OneTrainer's "lora_te<N>_" numbers.
    comfyui_clip_lora_prefixes: ClassVar[Mapping[str, tuple[str, ...]]] = MappingProxyType(
        {"text_encoder": ("lora_te_", "lora_te1_", "text_encoder.")})
    comfyui_t5_lora_prefixes: ClassVar[Mapping[str, tuple[str, ...]]] = MappingProxyType({})
    # Dotted prefixes ComfyUI also maps a DiT's diffusers paths under (besides transformer. / lora_transformer_).
    comfyui_extra_dit_lora_prefixes: ClassVar[tuple[str, ...]] = ()
    # The single-file UI whose LoRA loader users run: "A1111", "Forge" (ComfyUI's key maps) or None (neither).
    single_file_lora_loader: ClassVar[str | None] = "A1111"
    # A1111's text-encoder names per component: (kohya prefix, which modules: "clip_layers" = a CLIP's encoder
    # layers, "clip" = every CLIP module, "open_clip" = the six projections of each OpenCLIP layer).
    a1111_text_lora_names: ClassVar[Mapping[str, tuple[tuple[str, str], ...]]] = MappingProxyType(
        {"text_encoder": (("lora_te_", "clip_layers"), ("lora_te1_", "clip"))})
    # Image sides the denoiser can take must be multiples of this: the VAE's 8, times 2 where the denoiser reads
    # 2x2 latent patches (SD3's patch embedding, Flux's packing). Generation requests (width/height, the hires
    # target) and training buckets both follow it (`webui.generation.requests.check_size_for_family`,
    # `TrainingConfig.check_family`).
    size_multiple: ClassVar[int] = 8
    # Training methods that work on this family (the loop, the export and the methods' own code).
    training_methods: ClassVar[tuple[str, ...]] = ("lora", "dreambooth", "dreambooth_lora", "textual_inversion",
                                                   "pivotal")

    @property
    def components(self) -> tuple[str, ...]:
        """The weight-bearing components of a checkpoint of this family."""
        return (self.denoiser, "vae", *self.text_encoders)

    @property
    def config_folder(self) -> Path:
        """The shipped diffusers configs and tokenizer files (offline building of single-file checkpoints)."""
        return MODEL_CONFIGS / self.name

    @property
    def denoiser_in_channels(self) -> int:
        """The input channels of the denoiser's first layer for text-to-image (Flux packs 2x2 latent patches:
        4 x its 16 latent channels)."""
        return self.latent_channels

    def shipped_tokenizer_folder(self, tokenizer: str) -> Path:
        """Where the shipped files of one tokenizer are (a family may share another family's files)."""
        return self.config_folder / tokenizer

    @property
    def makes_images_from_text(self) -> bool:
        """Whether the family has a text-to-image pipeline (the SDXL refiner only refines given latents)."""
        return TXT2IMG in self.pipeline_classes

    @property
    def resident_mode(self) -> str:
        """The mode whose pipeline class the manager builds (the other modes wrap its modules)."""
        return TXT2IMG if self.makes_images_from_text else IMG2IMG

    def time_ids(self, height: int, width: int, positive: bool) -> list[float]:
        """The size/crop time ids a pooled-text UNet takes for a `height` x `width` picture (none by default)."""
        return []

    def pipeline_class_name(self, mode: str) -> str:
        try:
            return self.pipeline_classes[mode]
        except KeyError:
            raise ValueError(f"{self.label} has no pipeline for mode {mode!r}; "
                             f"known: {', '.join(self.pipeline_classes)}") from None

    def encode_token_ids(self, text_encoders: list[torch.nn.Module], token_ids: list[torch.Tensor],
                         clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (one [batch, 77] tensor per text encoder) -> (hidden states for cross-attention, pooled
        text embedding or None), with A1111's clip skip. The ONE encoding rule generation (weighted prompt
        chunks) and training (captions) share.

        Default, one CLIP encoder (SD1/SD2): the last layer, or with clip skip N the N-th layer from the end
        passed through the final LayerNorm."""
        encoder = text_encoders[0]
        output = encoder(token_ids[0], output_hidden_states=clip_skip > 1)
        if clip_skip > 1:
            return final_layer_norm(encoder)(output.hidden_states[-clip_skip]), None
        return output.last_hidden_state, None

    def encode_chunk(self, text_encoders: list[torch.nn.Module | None], token_ids: list[torch.Tensor],
                     clip_skip: int, joint_width: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One 77-token chunk of the CLIP encoders (those before `sequence_text_encoder`) -> (hidden states,
        pooled or None). `joint_width`: the denoiser's text width, for families that pad CLIP to it."""
        return self.encode_token_ids(text_encoders, token_ids, clip_skip)

    def flow_sampler_names(self, variant: str | None, fixed_shift: bool = False) -> tuple[str, ...] | None:
        """The flow samplers (webui.generation.samplers.FLOW_SAMPLERS names) this family's pipelines can drive
        for a model `variant` (`fixed_shift`: the request sets its own "Shift"); None: all of them."""
        return None

    def sequence_limit(self, variant: str | None) -> int:
        """How many tokens the `sequence_text_encoder` reads for a model of this family (EOS included)."""
        return self.sequence_max_tokens

    def encode_sequence(self, encoder: torch.nn.Module | None, token_ids: torch.Tensor | None,
                        joint_width: int, clip_ids: torch.Tensor, length: int) -> torch.Tensor:
        """The `sequence_text_encoder`'s hidden states for a whole prompt. Families that have one (SD3, Flux)
        override this; the engine calls it only for them, so reaching the default is a caller's mistake."""
        raise TypeError(f"{self.label} has no whole-prompt text encoder (its sequence_text_encoder is None)")

    def joint_width(self, denoiser_config: Mapping[str, Any]) -> int:
        """The text features' width the loaded denoiser takes (its config may differ from the family's
        published width, e.g. tiny test models)."""
        return int(denoiser_config.get("joint_attention_dim") or denoiser_config.get("cross_attention_dim")
                   or self.cross_attention_width)

    def prompt_arguments(self, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor,
                         pooled: torch.Tensor | None, negative_pooled: torch.Tensor | None,
                         cfg_scale: float, batch_size: int) -> dict[str, Any]:
        """What the family's diffusers pipelines take for one prompt's `batch_size` images and the guidance:
        our own embeddings (one row each), and the pooled ones for families conditioned on pooled text.
        Pipelines that do not repeat given embeddings per image (`repeats_given_embeddings`) get them
        repeated here. `pipeline_arguments` then adds (and may replace) what the family's calls take besides
        (Flux: its distilled guidance)."""
        per_prompt = batch_size
        if not self.repeats_given_embeddings:
            prompt_embeds, negative_prompt_embeds, pooled, negative_pooled = (
                None if tensor is None else tensor.repeat(batch_size, *([1] * (tensor.dim() - 1)))
                for tensor in (prompt_embeds, negative_prompt_embeds, pooled, negative_pooled))
            per_prompt = 1
        arguments: dict[str, Any] = dict(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                                         guidance_scale=cfg_scale, num_images_per_prompt=per_prompt)
        if self.conditions_on_pooled_text:
            arguments.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
        return arguments

    def latent_shape(self, height: int, width: int, vae_scale_factor: int) -> tuple[int, int, int]:
        """One image's initial-noise shape (A1111 draws noise in the VAE's latent layout)."""
        return (self.latent_channels, height // vae_scale_factor, width // vae_scale_factor)

    def pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents in the VAE's layout -> what the pipeline's `latents` argument takes (Flux packs 2x2)."""
        return latents

    def vae_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The pipeline's latents (step callback, "latent" output) -> the VAE's layout, for previews and the
        latent hires fix (the inverse of `pipeline_latents`)."""
        return latents

    def architecture_label(self, unet_in_channels: int, variant: str | None = None) -> str:
        return f"{self.label} inpainting" if unet_in_channels == 9 else self.label

    def lora_original_names(self, denoiser: torch.nn.Module) -> Mapping[str, tuple[RowPart, ...]]:
        """The denoiser's original module names (those of the model's own code, which kohya/ComfyUI LoRA files
        use) -> the installed modules and rows they became (`formats/dit_lora.py`). The SD families' UNet
        names come from the checkpoint converter instead (`formats/kohya.unet_ldm_names`): none here."""
        return {}

    def original_parameter_names(self, denoiser: torch.nn.Module) -> Mapping[str, str]:
        """The denoiser's parameters outside `lora_original_names`' layers (q/k norms, position tables), original
        parameter name -> installed one, for families whose single files use the model's own names (the
        single-file writer, `webui.models.single_file_writer`). None for the UNet families."""
        return {}

    def readable_lora_state(self, state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """A LoRA file's tensors as the LoRA reader's tables name them: layouts only diffusers converts
        (`lora_layouts_diffusers_converts`) through diffusers' converter, others unchanged."""
        return converted_by_diffusers(state_dict, self.pipeline_class_name(self.resident_mode),
                                      self.lora_layouts_diffusers_converts)

    def variant_of_denoiser_config(self, config: Mapping[str, Any]) -> str | None:
        """Which model of the family a denoiser config describes (e.g. SD3.5 "medium" or "large"); None when
        the family has one architecture."""
        return None

    def fit_configs(self, configs: Mapping[str, dict[str, Any]],
                    state_dicts: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, dict[str, Any]]:
        """The shipped component configs adjusted to the shapes of these (diffusers-keyed) weights. The SD
        families ship one config per component and use it as is."""
        return {name: dict(config) for name, config in configs.items()}

    def unpack_latents(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """A pipeline's latents during denoising (what step callbacks see) as [batch, channels, h, w] for the
        live preview; families that denoise packed tokens (Flux) unpack them. Identity by default."""
        return latents

    def pipeline_arguments(self, variant: str | None, guidance_scale: float | None = None) -> dict[str, Any]:
        """Family-specific arguments of a pipeline call (Flux: distilled guidance, T5 length); none by default."""
        return {}

    def default_prediction_type(self, resolution: tuple[int, int]) -> str:
        """"epsilon" or "v" for a model of this family trained at `resolution` (when its config does not say)."""
        return "epsilon"

    def lora_training_targets(self, denoiser: torch.nn.Module, suffixes: tuple[str, ...]) -> list[str]:
        """Full paths of the denoiser layers a LoRA trains for the chosen target suffixes (`to_q`, `ff.net.2`,
        ... as the Train tab offers them). SD UNets: the layers inside the transformer blocks of its
        `attentions`, whose names end with a suffix."""
        return [name for name, module in denoiser.named_modules()
                if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and ".attentions." in f".{name}"
                and any(name == suffix or name.endswith("." + suffix) for suffix in suffixes)]

    def denoiser_training_call(self, denoiser: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor,
                               text_states: torch.Tensor, pooled: torch.Tensor | None,
                               time_ids: torch.Tensor) -> torch.Tensor:
        """One training forward pass of the denoiser -> its prediction. UNets take the text states for
        cross-attention, SDXL-style ones also the pooled embedding and the size/crop `time_ids`."""
        extra = {}
        if self.conditions_on_pooled_text:
            extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        return denoiser(noisy, timesteps, text_states, **extra).sample

    def text_encoding_options(self, denoiser_config: Mapping[str, Any]) -> dict[str, Any]:
        """Extra keyword arguments of `encode_token_ids` that depend on the denoiser (none by default)."""
        return {}

    @abstractmethod
    def modelspec_architecture(self, prediction_type: str, variant: str | None = None) -> str:
        """The modelspec `architecture` id of a base model of this family (`variant`: which model of the
        family, as `variant_of_ldm_keys` / `variant_of_denoiser_config` name it; None when unknown)."""
        ...

    def scheduler_overrides(self, single_file_keys: Collection[str]) -> dict[str, Any]:
        """Scheduler settings a single-file checkpoint declares by marker keys (none by default)."""
        return {}

    # -- detection -------------------------------------------------------------------------------
    def matches_ldm_keys(self, keys: list[str]) -> bool:
        """Does a single-file (LDM layout) checkpoint with these tensor names belong to this family? Every
        text encoder's prefix is present (families are tried most specific first)."""
        return all(has_key_prefix(keys, encoder.prefix) for encoder in self.ldm_text_encoders)

    def ldm_detection_names(self) -> str:
        """The tensor names `matches_ldm_keys` looks for, as a user reads them in a refusal ("no known family's
        names were found: ...")."""
        return " + ".join(f"{encoder.prefix}*" for encoder in self.ldm_text_encoders)

    def ldm_in_channels(self, key_shapes: Mapping[str, tuple[int, ...]]) -> int | None:
        """The denoiser's input channels in a single file (its first convolution / patch embedding)."""
        shape = key_shapes.get("model.diffusion_model.input_blocks.0.0.weight")
        return int(shape[1]) if shape is not None and len(shape) == 4 else None

    def variant_of_ldm_keys(self, keys: list[str]) -> str | None:
        """Which model of the family a single file's tensor names describe; None for one-model families."""
        return None

    @abstractmethod
    def matches_diffusers(self, unet_config: Mapping[str, Any], component_folders: set[str]) -> bool:
        """Does a diffusers folder (its UNet config and component sub-folders) belong to this family?"""
        ...

    # The diffusers class of ControlNets for the family's transformer (Flux: "FluxControlNetModel"); None: the family
    # has UNet ControlNets (`takes_controlnet`) or none. A family with one has its transformer calls routed through
    # the job's residual hooks (webui.generation.hooked_modules.HookedTransformer).
    transformer_controlnet: ClassVar[str | None] = None
    # Names of the control modes of the family's union ControlNets, by mode index (a union ControlNet embeds the
    # index: which kind of map it is given); empty: none known.
    controlnet_union_modes: ClassVar[tuple[str, ...]] = ()

    def transformer_controlnet_config(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The config of a `transformer_controlnet` from its (diffusers-named) weights, for files that come without
        a config.json. Only families with transformer ControlNets override it."""
        raise TypeError(f"{self.label} has no transformer ControlNets")

    def takes_controlnet(self, context_width: int, added_conditioning: bool) -> bool:
        """Whether a UNet ControlNet with this text width (its cross-attention key input) and, SDXL-style, size and
        pooled-text conditioning belongs to this family. Asked in `FAMILIES` order, the first yes wins; families
        with no UNet ControlNets say no."""
        return False

    @abstractmethod
    def matches_lora_metadata(self, base_model_version: str, architecture: str) -> bool:
        """Does a LoRA's training metadata (`ss_base_model_version`, `modelspec.architecture`) name this family?"""
        ...

    def __repr__(self) -> str:
        return f"<ModelFamily {self.name}>"


def final_layer_norm(encoder: torch.nn.Module) -> torch.nn.Module:
    """The CLIP text model's last LayerNorm (transformers 5 dropped the `text_model` level on CLIPTextModel)."""
    return getattr(encoder, "text_model", encoder).final_layer_norm


def frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


def has_key_prefix(keys: list[str], prefix: str) -> bool:
    return any(key.startswith(prefix) for key in keys)
