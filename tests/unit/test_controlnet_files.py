"""ControlNet files: each layout people download loads into the same module, families are told apart and
mismatches, control-lora and pickles that need code are refused with the reason; built modules stay in RAM."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from tests.support.controlnet_files import (
    sd1_unet_config,
    sd2_unet_config,
    sdxl_unet_config,
    tiny_controlnet,
    write_diffusers_folder,
    write_ldm,
)
from webui.models.controlnet_files import ControlNetFileError, inspect_file
from webui.models.controlnet_store import ControlNetStore, UnknownControlNetError

CPU = torch.device("cpu")


def _same_weights(module, reference) -> None:
    expected = reference.state_dict()
    loaded = module.state_dict()
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


@pytest.fixture(scope="module")
def sd1_controlnet():
    return tiny_controlnet(sd1_unet_config(), seed=1)


@pytest.fixture(scope="module")
def sdxl_controlnet():
    return tiny_controlnet(sdxl_unet_config(), seed=2)


@pytest.mark.parametrize("name, prefix", [("control_v11p_sd15_canny.safetensors", "control_model."),
                                          ("control_v11p_sd15_scribble.pth", "control_model."),
                                          ("control_sd15_repacked.safetensors", "")])
def test_sd1_ldm_files_load_with_the_exact_weights(tmp_path, sd1_controlnet, name, prefix):
    write_ldm(tmp_path / name, sd1_controlnet, prefix)
    store = ControlNetStore(tmp_path)
    [(title, found)] = store.usable()
    assert title.startswith(name.rsplit(".", 1)[0] + " [") and found.family == "sd1" and found.layout == "ldm"
    module = store.load(title, "sd1", sd1_unet_config(), "sd-studio-toy", CPU, torch.float32)
    _same_weights(module, sd1_controlnet)


def test_sdxl_diffusers_folder_and_ldm_file_load_and_are_sdxl(tmp_path, sdxl_controlnet):
    write_diffusers_folder(tmp_path / "controlnet-canny-sdxl-1.0", sdxl_controlnet)
    write_ldm(tmp_path / "sdxl_canny_ldm.safetensors", sdxl_controlnet)
    store = ControlNetStore(tmp_path)
    found = dict((f.name, f) for _, f in store.usable())
    assert {f.family for f in found.values()} == {"sdxl"}
    assert found["controlnet-canny-sdxl-1.0"].layout == "diffusers" and found["sdxl_canny_ldm"].layout == "ldm"
    for name in found:
        module = store.load(name, "sdxl", sdxl_unet_config(), "tiny-sdxl", CPU, torch.float32)
        _same_weights(module, sdxl_controlnet)


def test_another_family_is_refused_naming_both(tmp_path, sd1_controlnet, sdxl_controlnet):
    write_ldm(tmp_path / "control_v11p_sd15_canny.safetensors", sd1_controlnet)
    store = ControlNetStore(tmp_path)
    with pytest.raises(ControlNetFileError) as refused:
        store.load("control_v11p_sd15_canny", "sdxl", sdxl_unet_config(), "sd_xl_base_1.0", CPU, torch.float32)
    assert "control_v11p_sd15_canny" in str(refused.value) and "sd_xl_base_1.0" in str(refused.value)
    assert "SD1.x" in str(refused.value) and "SDXL" in str(refused.value)


@pytest.fixture(scope="module")
def sd2_controlnet():
    return tiny_controlnet(sd2_unet_config(), seed=3)


def test_sd2_ldm_file_and_diffusers_folder_are_sd2_and_load_on_an_sd2_checkpoint(tmp_path, sd2_controlnet):
    write_ldm(tmp_path / "control_v11p_sd21_canny.safetensors", sd2_controlnet)
    write_ldm(tmp_path / "controlnet_sd21_depth.pth", sd2_controlnet, prefix="")
    write_diffusers_folder(tmp_path / "controlnet-sd21-canny-diffusers", sd2_controlnet)
    store = ControlNetStore(tmp_path)
    found = {f.name: f for _, f in store.usable()}
    assert sorted(found) == ["control_v11p_sd21_canny", "controlnet-sd21-canny-diffusers", "controlnet_sd21_depth"]
    assert {(f.family, f.context_width) for f in found.values()} == {("sd2", 1024)}
    assert [f.layout for _, f in sorted(found.items())] == ["ldm", "diffusers", "ldm"]
    assert len(store.usable("sd2")) == 3 and store.usable("sd1") == [] and store.usable("sdxl") == []
    for name in found:
        module = store.load(name, "sd2", sd2_unet_config(), "v2-1_768-ema-pruned", CPU, torch.float32)
        _same_weights(module, sd2_controlnet)
        assert module.config.cross_attention_dim == 1024 and module.config.use_linear_projection


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_an_sd2_controlnet_is_refused_on_an_sd1_checkpoint_and_an_sd1_one_on_sd2(tmp_path, sd1_controlnet,
                                                                                 sd2_controlnet, layout):
    if layout == "ldm":
        write_ldm(tmp_path / "control_v11p_sd21_canny.safetensors", sd2_controlnet)
        write_ldm(tmp_path / "control_v11p_sd15_canny.safetensors", sd1_controlnet)
    else:
        write_diffusers_folder(tmp_path / "control_v11p_sd21_canny", sd2_controlnet)
        write_diffusers_folder(tmp_path / "control_v11p_sd15_canny", sd1_controlnet)
    store = ControlNetStore(tmp_path)
    with pytest.raises(ControlNetFileError) as refused:
        store.load("control_v11p_sd21_canny", "sd1", sd1_unet_config(), "v1-5-pruned-emaonly", CPU, torch.float32)
    message = str(refused.value)
    assert "control_v11p_sd21_canny" in message and "v1-5-pruned-emaonly" in message
    assert "SD2.x" in message and "SD1.x" in message
    with pytest.raises(ControlNetFileError) as refused:
        store.load("control_v11p_sd15_canny", "sd2", sd2_unet_config(), "v2-1_768-ema-pruned", CPU, torch.float32)
    message = str(refused.value)
    assert "control_v11p_sd15_canny" in message and "v2-1_768-ema-pruned" in message
    assert "SD2.x" in message and "SD1.x" in message


def test_control_lora_and_non_controlnets_are_listed_with_the_reason(tmp_path):
    save_file({"lora_controlnet": torch.zeros(1), "input_blocks.1.0.in_layers.2.up": torch.zeros(4, 2)},
              str(tmp_path / "control-lora-canny-rank128.safetensors"))
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
              str(tmp_path / "not_a_controlnet.safetensors"))
    reasons = dict(ControlNetStore(tmp_path).scan())
    assert "control-lora" in reasons[next(t for t in reasons if t.startswith("control-lora"))]
    assert "not a ControlNet" in reasons[next(t for t in reasons if t.startswith("not_a_controlnet"))]
    assert ControlNetStore(tmp_path).titles() == []
    with pytest.raises(ControlNetFileError, match="control-lora"):
        ControlNetStore(tmp_path).find("control-lora-canny-rank128")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pth_that_needs_code_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"control_model.zero_convs.0.0.weight": _Payload()}, handle)
    with pytest.raises(ControlNetFileError, match="cannot be read"):
        inspect_file(path)
    assert "this must never run" not in capsys.readouterr().out


def test_unknown_name_lists_the_models_and_built_modules_are_cached_bounded(tmp_path, sd1_controlnet):
    write_ldm(tmp_path / "a.safetensors", sd1_controlnet)
    write_ldm(tmp_path / "b.safetensors", sd1_controlnet)
    write_ldm(tmp_path / "c.safetensors", sd1_controlnet)
    store = ControlNetStore(tmp_path, capacity=2)
    with pytest.raises(UnknownControlNetError) as unknown:
        store.find("control_v11p_sd15_depth [fefefefe]")
    assert "a [" in str(unknown.value) and "c [" in str(unknown.value)
    first = store.load("a", "sd1", sd1_unet_config(), "toy", CPU, torch.float32)
    assert store.load(store.titles()[0], "sd1", sd1_unet_config(), "toy", CPU, torch.float32) is first
    store.load("b", "sd1", sd1_unet_config(), "toy", CPU, torch.float32)
    store.load("c", "sd1", sd1_unet_config(), "toy", CPU, torch.float32)
    assert store.cached_count() == 2
    assert store.load("a", "sd1", sd1_unet_config(), "toy", CPU, torch.float32) is not first


def test_a_worker_tells_the_scheduler_which_controlnets_it_holds(tmp_path, sd1_controlnet):
    """The ModelManager side of the scheduler's ControlNet affinity: names become files, and the files whose
    modules are built on the manager's device are what its worker holds."""
    from webui.models.catalog import CheckpointCatalog
    from webui.models.hashing import HashCache
    from webui.models.manager import ModelManager

    folder = tmp_path / "ControlNet"
    first = write_ldm(folder / "a.safetensors", sd1_controlnet)
    second = write_ldm(folder / "b.safetensors", sd1_controlnet)
    store = ControlNetStore(folder)
    (tmp_path / "checkpoints").mkdir()
    manager = ModelManager(CheckpointCatalog(tmp_path / "checkpoints", HashCache(tmp_path / "hashes.json")), CPU,
                           torch.float32, controlnets=store)
    assert manager.control_keys(["a", "b [0badc0de]", "not-there"]) == (str(first), str(second))
    assert manager.held_control_keys() == frozenset()
    store.load("b", "sd1", sd1_unet_config(), "toy", CPU, torch.float32)
    assert manager.held_control_keys() == {str(second)}
    assert store.built_paths(torch.device("meta")) == frozenset()  # built for another device: not held there


def test_shipped_controlnets_are_listed_after_the_users_and_a_users_file_of_the_same_name_wins(tmp_path, sd1_controlnet):
    user, shipped = tmp_path / "ControlNet", tmp_path / "shipped"
    write_ldm(shipped / "control_sdstudio_toy_canny.safetensors", sd1_controlnet)
    (shipped / "README.md").write_text("model card", encoding="utf-8")   # not a model: not listed
    store = ControlNetStore(user, shipped_folders=(shipped,))
    assert [found.name for _, found in store.usable()] == ["control_sdstudio_toy_canny"]
    assert store.find("control_sdstudio_toy_canny").path == shipped / "control_sdstudio_toy_canny.safetensors"
    own = write_ldm(user / "control_sdstudio_toy_canny.safetensors", tiny_controlnet(sd1_unet_config(), seed=9))
    write_ldm(user / "control_v11p_sd15_canny.safetensors", sd1_controlnet)
    assert [found.path for _, found in store.usable()] == [
        own, user / "control_v11p_sd15_canny.safetensors", shipped / "control_sdstudio_toy_canny.safetensors"]
    assert store.find("control_sdstudio_toy_canny").path == own
