"""Model upscalers on tiny random models saved as real files: detection of each architecture, refusals with
their reasons, the lazy per-file detection cache, tiled running against untiled, alpha, exact sizes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests import upscaler_files as files
from webui.generation.requests import RequestError
from webui.upscaling.catalog import UpscalerCatalog
from webui.upscaling.service import UpscalerService
from webui.upscaling.spandrel_architectures import SpandrelMissingError, load_architectures
from webui.upscaling.tiles import TileSettings, run_model, upscale_tensor


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """One folder of every kind of file the catalog meets."""
    root = tmp_path_factory.mktemp("upscalers")
    files.write_esrgan_old(root / "esrgan-old-4x.pth", scale=4)
    files.write_esrgan_new(root / "esrgan-new-2x.pth", scale=2)
    files.write_realesrgan(root / "RealESRGAN_x4plus.pth", scale=4)
    files.write_compact(root / "compact-2x.safetensors", scale=2)
    files.write_compact(root / "compact-params-4x.pth", scale=4)
    files.write_swinir(root / "swinir-2x.pth", scale=2)
    files.write_dat(root / "dat-2x.safetensors", scale=2)
    files.write_unknown_architecture(root / "mystery.safetensors")
    files.write_code_pickle(root / "runs-code.pth", root / "marker.txt")
    files.write_corrupt(root / "broken.pth")
    (root / "notes.txt").write_text("not a model")
    return root


def image(width: int = 70, height: int = 50, seed: int = 0, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, len(mode)), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def service(folder: Path, tile: int = 0, overlap: int = 8) -> UpscalerService:
    return UpscalerService(UpscalerCatalog([folder]), lambda: TileSettings(tile, overlap))


def test_every_architecture_is_detected_from_its_file_with_name_and_scale(folder):
    entries = {entry.name: entry for entry in service(folder).entries()}
    found = {name: (entry.architecture, entry.scale) for name, entry in entries.items() if entry.usable and not entry.builtin}
    assert found == {"esrgan-old-4x": ("ESRGAN", 4), "esrgan-new-2x": ("ESRGAN", 2), "RealESRGAN_x4plus": ("ESRGAN", 4),
                     "compact-2x": ("RealESRGAN Compact", 2), "compact-params-4x": ("RealESRGAN Compact", 4),
                     "swinir-2x": ("SwinIR", 2), "dat-2x": ("DAT", 2)}
    assert [entry.name for entry in service(folder).entries()][:3] == ["None", "Lanczos", "Nearest"]
    assert "notes" not in entries


def test_unusable_files_are_listed_with_their_reason_and_the_pickle_never_runs(folder):
    entries = {entry.name: entry for entry in service(folder).entries()}
    assert not entries["runs-code"].usable and "arbitrary code" in entries["runs-code"].reason
    assert not (folder / "marker.txt").exists()  # the pickle's function was never called
    assert not entries["mystery"].usable
    assert f"not recognised by spandrel {load_architectures().version}" in entries["mystery"].reason
    assert not entries["broken"].usable and "corrupt" in entries["broken"].reason
    with pytest.raises(RequestError, match="arbitrary code") as refused:
        service(folder).check("runs-code")
    assert "esrgan-old-4x" in str(refused.value) and "Lanczos" in str(refused.value)
    with pytest.raises(RequestError, match="unknown; available: None, Lanczos, Nearest"):
        service(folder).check("4x-UltraSharp")


def test_without_spandrel_model_files_are_unusable_and_the_filters_still_work(folder):
    def missing():
        raise SpandrelMissingError("spandrel is not installed (python launch.py installs it)")

    upscalers = UpscalerService(UpscalerCatalog([folder], architectures=missing))
    entries = upscalers.entries()
    assert all(not entry.usable and "spandrel is not installed" in entry.reason for entry in entries if not entry.builtin)
    assert upscalers.upscale(image(), "Lanczos", 2).size == (140, 100)


class CountingArchitectures:
    """spandrel's registry, counting how many files it had to detect."""

    def __init__(self):
        self.real = load_architectures()
        self.loads = 0
        self.version, self.unavailable = self.real.version, self.real.unavailable
        self.unsupported_error = self.real.unsupported_error

    def load(self, state_dict):
        self.loads += 1
        return self.real.load(state_dict)


def test_files_are_read_once_until_they_change(tmp_path):
    for index in range(3):
        files.write_compact(tmp_path / f"compact-{index}.safetensors", seed=index)
    counting = CountingArchitectures()
    kept = tmp_path / "cache" / "upscalers.json"
    catalog = UpscalerCatalog([tmp_path], architectures=lambda: counting, cache_file=kept)
    assert UpscalerService(catalog).check("Lanczos").builtin
    assert counting.loads == 0  # nothing is read before the list is asked for (a built-in needs no list)
    assert len(catalog.entries()) == 6 and counting.loads == 3
    catalog.refresh()
    catalog.entries()
    assert counting.loads == 3
    files.write_esrgan_old(tmp_path / "compact-1.safetensors.pth", scale=2)
    (tmp_path / "compact-1.safetensors").unlink()
    files.write_compact(tmp_path / "compact-2.safetensors", scale=4, seed=9)
    os.utime(tmp_path / "compact-2.safetensors", ns=(1, 10**18))
    catalog.refresh()
    entries = {entry.name: entry for entry in catalog.entries()}
    assert counting.loads == 5
    assert entries["compact-2"].scale == 4 and entries["compact-1.safetensors"].architecture == "ESRGAN"
    files.write_compact(tmp_path / "dropped-in.safetensors")  # no refresh: the folder's change is seen
    listed = catalog.entries()
    assert "dropped-in" in [entry.name for entry in listed] and counting.loads == 6

    after_restart = CountingArchitectures()  # a new process: the kept outcomes are used, no file is read
    assert UpscalerCatalog([tmp_path], architectures=lambda: after_restart, cache_file=kept).entries() == listed
    assert after_restart.loads == 0


def test_a_model_upscale_reaches_the_exact_size_and_is_not_lanczos(folder):
    upscalers = service(folder)
    source = image(30, 20)
    twice = upscalers.upscale(source, "compact-2x", 4)  # two passes of the 2x model
    assert twice.size == (120, 80) and twice.mode == "RGB"
    lanczos = np.asarray(source.resize((120, 80), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(np.asarray(twice, dtype=float) - lanczos).mean() > 5
    assert upscalers.upscale(source, "esrgan-old-4x", 1.5).size == (45, 30)
    assert upscalers.upscale(source, "compact-2x", 1, size=(33, 17)).size == (33, 17)


@pytest.mark.parametrize("name", ["esrgan-new-2x", "compact-2x"])
def test_tiled_output_equals_untiled_within_a_small_tolerance(folder, name):
    """Without overlap the seams differ by over 10 levels of 255 on these models; blended, by 2 or 3."""
    source = image(80, 60, seed=3)
    whole = np.asarray(service(folder, tile=0).upscale(source, name, 2), dtype=float)
    tiled = np.asarray(service(folder, tile=32, overlap=8).upscale(source, name, 2), dtype=float)
    difference = np.abs(whole - tiled)
    assert difference.mean() < 0.15 and difference.max() <= 3, (difference.mean(), difference.max())


def test_tiles_are_padded_to_the_models_size_requirements(folder):
    descriptor = UpscalerCatalog([folder]).model(service(folder).check("swinir-2x"))
    assert descriptor.size_requirements.minimum > 10
    tiny = torch.rand(1, 3, 10, 7)
    assert run_model(descriptor, tiny).shape == (1, 3, 20, 14)
    assert service(folder, tile=32, overlap=4).upscale(image(45, 9), "swinir-2x", 2).size == (90, 18)


def test_alpha_is_enlarged_with_lanczos_and_kept(folder):
    source = image(40, 30, mode="RGBA")
    result = service(folder).upscale(source, "compact-2x", 2)
    assert result.mode == "RGBA" and result.size == (80, 60)
    expected = source.getchannel("A").resize((80, 60), Image.Resampling.LANCZOS)
    assert result.getchannel("A").tobytes() == expected.tobytes()


class RunsOutOfMemoryAbove:
    """A real model that raises CUDA's out-of-memory error for inputs larger than `limit` pixels a side,
    as a GPU with little memory does."""

    def __init__(self, descriptor, limit: int):
        self.descriptor, self.limit, self.sides = descriptor, limit, []
        self.scale, self.size_requirements, self.tiling = descriptor.scale, descriptor.size_requirements, descriptor.tiling

    def __call__(self, tensor):
        self.sides.append(max(tensor.shape[-2:]))
        if max(tensor.shape[-2:]) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.descriptor(tensor)


def test_out_of_memory_retries_with_smaller_tiles_then_fails_clearly(folder):
    descriptor = UpscalerCatalog([folder]).model(service(folder).check("compact-2x"))
    source = torch.rand(1, 3, 100, 100)
    model = RunsOutOfMemoryAbove(descriptor, 40)
    output = upscale_tensor(model, source, TileSettings(128, 4))
    assert output.shape == (1, 3, 200, 200) and max(model.sides[-1:]) <= 40 and 100 in model.sides
    with pytest.raises(RequestError, match="out of GPU memory"):
        upscale_tensor(RunsOutOfMemoryAbove(descriptor, 8), source, TileSettings(64, 4))


def test_bad_tile_settings_and_sizes_are_refused(folder):
    with pytest.raises(RequestError, match="ESRGAN_tile_overlap"):
        service(folder, tile=32, overlap=16).upscale(image(), "compact-2x", 2)
    with pytest.raises(RequestError, match="ESRGAN_tile "):
        service(folder, tile=8).upscale(image(), "compact-2x", 2)
    limited = UpscalerService(UpscalerCatalog([folder]), max_pixels=10_000)
    with pytest.raises(ValueError, match="limit"):
        limited.upscale(image(), "compact-2x", 4)


def test_an_upscaler_name_with_a_comma_is_quoted_in_the_postprocessing_parameters(tmp_path):
    from webui.generation.extras import ExtrasRequest, upscale_image
    from webui.generation.infotext import parse_infotext

    files.write_compact(tmp_path / "2x, sharp.safetensors", scale=2)
    upscalers = service(tmp_path)
    request = ExtrasRequest(upscaler_1="2x, sharp", upscaler_2="Nearest", extras_upscaler_2_visibility=0.5,
                            upscaling_resize=2).validate(upscalers)
    result, text = upscale_image(image(20, 10), request, upscalers, None)
    assert result.size == (40, 20)
    parameters = parse_infotext(text)  # by, upscaler, upscaler 2: three pairs make a parameter line
    assert parameters["Postprocess upscaler"] == "2x, sharp" and parameters["Postprocess upscaler 2"] == "Nearest"


def test_a_model_built_while_a_checkpoint_loads_gets_its_real_weights(tmp_path):
    """diffusers loads checkpoints inside accelerate's init_empty_weights, which empties every module any
    thread builds meanwhile: an upscaler built then must not be kept with empty (meta) weights."""
    import threading
    import time

    from accelerate import init_empty_weights

    files.write_compact(tmp_path / "compact-2x.safetensors", scale=2)
    loading, done = threading.Event(), threading.Event()

    def load_a_checkpoint() -> None:
        with init_empty_weights():
            loading.set()
            time.sleep(1.0)
        done.set()

    threading.Thread(target=load_a_checkpoint, daemon=True).start()
    loading.wait(5)
    upscalers = service(tmp_path)
    result = upscalers.upscale(image(20, 10), "compact-2x", 2)
    assert done.is_set()  # the build waited for the load to end
    assert result.size == (40, 20)
    model = upscalers.catalog.model(upscalers.check("compact-2x")).model
    assert not any(parameter.is_meta for parameter in model.parameters())
