"""Safe reading of downloaded weight files: safetensors, weights-only pickles, and refusing the rest."""

from __future__ import annotations

import json
import resource
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.models.checkpoint_files import (
    CheckpointReadError,
    read_key_shapes,
    read_metadata,
    read_state_dict,
)


def _create_marker(path: str) -> None:
    """Side effect an attacker's pickle would run on load; the test checks it never happens."""
    Path(path).write_text("code ran")


class _PayloadRunningOnUnpickle:
    """An object whose unpickling calls an arbitrary function, like a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (_create_marker, (str(self.marker),))


class _CustomTrainingState:
    """A plain non-tensor class, as found in checkpoints that pickled trainer objects."""

    def __init__(self) -> None:
        self.step = 10


def _small_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3, generator=generator),
        "model.diffusion_model.out.2.bias": torch.randn(4, generator=generator).half(),
    }


def _assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype
        assert torch.equal(actual[key], value)


def test_pickle_with_code_payload_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "malicious.ckpt"
    torch.save({"state_dict": _small_tensors(), "payload": _PayloadRunningOnUnpickle(marker)}, path)

    with pytest.raises(CheckpointReadError, match="refused: needs arbitrary code unpickling") as raised:
        read_state_dict(path)

    assert "malicious.ckpt" in str(raised.value)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_pickle_with_custom_class_object_is_refused_for_every_read(tmp_path: Path) -> None:
    path = tmp_path / "trainer_state.ckpt"
    torch.save({"state_dict": _small_tensors(), "trainer": _CustomTrainingState()}, path)

    for read in (read_state_dict, read_key_shapes):
        with pytest.raises(CheckpointReadError, match="trainer_state.ckpt.*refused") as raised:
            read(path)
        assert "_CustomTrainingState" in str(raised.value)


def test_weights_only_ckpt_is_read_and_state_dict_unwrapped(tmp_path: Path) -> None:
    tensors = _small_tensors()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tensors, "global_step": 4200, "epoch": 3}, path)

    _assert_same_tensors(read_state_dict(path), tensors)
    assert read_key_shapes(path) == {key: tuple(value.shape) for key, value in tensors.items()}
    assert read_metadata(path) == {}


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth"])
def test_flat_pickled_state_dicts_in_legacy_and_zip_formats_are_read(tmp_path: Path, suffix: str) -> None:
    tensors = _small_tensors()
    zip_path = tmp_path / f"zip{suffix}"
    legacy_path = tmp_path / f"legacy{suffix}"
    torch.save(tensors, zip_path)
    torch.save(tensors, legacy_path, _use_new_zipfile_serialization=False)

    _assert_same_tensors(read_state_dict(zip_path), tensors)
    _assert_same_tensors(read_state_dict(legacy_path), tensors)


def test_safetensors_tensors_shapes_and_metadata_are_read(tmp_path: Path) -> None:
    tensors = _small_tensors()
    path = tmp_path / "model.safetensors"
    save_file(tensors, path, metadata={"ss_output_name": "my-model", "modelspec.architecture": "stable-diffusion-v1"})

    _assert_same_tensors(read_state_dict(path), tensors)
    assert read_key_shapes(path) == {
        "model.diffusion_model.out.2.weight": (4, 8, 3, 3),
        "model.diffusion_model.out.2.bias": (4,),
    }
    assert read_metadata(path) == {"ss_output_name": "my-model", "modelspec.architecture": "stable-diffusion-v1"}


def test_truncated_safetensors_is_reported_with_its_name(tmp_path: Path) -> None:
    whole = tmp_path / "whole.safetensors"
    save_file({"weight": torch.randn(64, 64)}, whole)
    data = whole.read_bytes()
    truncated = tmp_path / "half-downloaded.safetensors"
    truncated.write_bytes(data[: len(data) // 2])

    for read in (read_state_dict, read_key_shapes, read_metadata):
        with pytest.raises(CheckpointReadError, match="half-downloaded.safetensors.*truncated"):
            read(truncated)


def test_text_file_renamed_to_safetensors_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "readme.safetensors"
    path.write_text("This model can be downloaded from the link below.\n" * 20)

    for read in (read_state_dict, read_key_shapes):
        with pytest.raises(CheckpointReadError, match="readme.safetensors.*not a valid safetensors file"):
            read(path)


def test_truncated_and_non_checkpoint_pickle_files_are_reported(tmp_path: Path) -> None:
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"weight": torch.randn(64, 64)}}, whole)
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")

    with pytest.raises(CheckpointReadError, match="cut.ckpt.*truncated, corrupt"):
        read_state_dict(truncated)
    with pytest.raises(CheckpointReadError, match="notes.ckpt.*not a PyTorch checkpoint"):
        read_state_dict(text)


def test_missing_file_and_unknown_suffix_are_reported(tmp_path: Path) -> None:
    with pytest.raises(CheckpointReadError, match="absent.safetensors.*does not exist"):
        read_key_shapes(tmp_path / "absent.safetensors")
    other = tmp_path / "model.onnx"
    other.write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointReadError, match="model.onnx.*unsupported file type"):
        read_state_dict(other)


def test_read_key_shapes_reads_only_the_header_of_a_huge_file(tmp_path: Path) -> None:
    """A header announcing 8 GiB of tensors over a sparse file: reading the data would be slow and huge."""
    huge_bytes = 8 * 1024**3
    shape = [65536, huge_bytes // (65536 * 2)]
    header = json.dumps(
        {
            "__metadata__": {"format": "pt"},
            "model.diffusion_model.input_blocks.0.0.weight": {
                "dtype": "F16",
                "shape": shape,
                "data_offsets": [0, huge_bytes],
            },
        }
    ).encode()
    path = tmp_path / "huge.safetensors"
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)))
        handle.write(header)
        handle.truncate(8 + len(header) + huge_bytes)

    peak_rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    shapes = read_key_shapes(path)
    elapsed = time.perf_counter() - started
    peak_rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_rss_before

    assert shapes == {"model.diffusion_model.input_blocks.0.0.weight": tuple(shape)}
    assert read_metadata(path) == {"format": "pt"}
    assert elapsed < 1.0
    assert peak_rss_growth_kib < 256 * 1024
