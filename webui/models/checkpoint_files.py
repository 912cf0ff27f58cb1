"""Safe reading of single-file model weights (.safetensors, .ckpt, .pt, .pth, .bin).

Downloaded checkpoints are untrusted: pickle-based files are only ever opened with
``torch.load(weights_only=True)``, so a file that needs arbitrary code to unpickle is refused
instead of executed. Every failure is raised as :class:`CheckpointReadError`, whose message names
the file and the reason, so callers (catalog scans, the load button) can show it to the user as is.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

SAFETENSORS_SUFFIXES = frozenset({".safetensors"})
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin"})


class CheckpointReadError(ValueError):
    """A weights file could not be read; the message names the file and why."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Cannot read '{self.path}': {reason}")


def _describe_safetensors_error(error: Exception) -> str:
    """Turn safetensors' terse header errors into a reason a user understands."""
    message = str(error)
    lowered = message.lower()
    if "incomplete metadata" in lowered or "not fully covered" in lowered:
        return f"file is truncated or incomplete (safetensors: {message})"
    if "header too large" in lowered or "header too small" in lowered or "invalid" in lowered:
        return f"not a valid safetensors file (safetensors: {message})"
    return f"corrupt safetensors file ({message})"


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise CheckpointReadError(path, "file does not exist")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except SafetensorError as error:
        raise CheckpointReadError(path, _describe_safetensors_error(error)) from error
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointReadError(path, f"corrupt safetensors file ({error})") from error


def _weights_only_refusal_detail(error: pickle.UnpicklingError) -> str:
    """Pull the one useful line (e.g. 'Unsupported global: ...') out of torch's long message."""
    message = str(error)
    marker = "WeightsUnpickler error:"
    if marker in message:
        detail = message.split(marker, 1)[1].strip().split("\n\n", 1)[0]
        return detail.split(". ", 1)[0].strip() or "unsupported pickle content"
    return message.splitlines()[0] if message else "unsupported pickle content"


def read_pickle_checkpoint(path: Path) -> object:
    """The unpickled top-level object of a .ckpt/.pt/.pth/.bin, through torch's weights-only loader only;
    a file that needs arbitrary code is refused (CheckpointReadError naming the class it wanted)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = _weights_only_refusal_detail(error)
        raise CheckpointReadError(
            path, f"refused: needs arbitrary code unpickling ({detail}); convert it to .safetensors"
        ) from error
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError) as error:
        # Which of these torch raises depends on where the bytes stop making sense.
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointReadError(
            path,
            f"file is truncated, corrupt or not a PyTorch checkpoint ({type(error).__name__}: {first_line})",
        ) from error


def _tensors_from_loaded_object(path: Path, loaded: object) -> dict[str, torch.Tensor]:
    """Unwrap Lightning-style {'state_dict': {...}} files and keep only the named tensors."""
    if not isinstance(loaded, dict):
        raise CheckpointReadError(path, f"contains a {type(loaded).__name__}, not a dict of tensors")
    inner = loaded.get("state_dict")
    mapping = inner if isinstance(inner, dict) else loaded
    tensors = {
        str(key): value for key, value in mapping.items() if isinstance(value, torch.Tensor)
    }
    if not tensors:
        raise CheckpointReadError(path, "contains no tensors")
    return tensors


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a weights file onto the CPU, never executing pickled code."""
    path = Path(path)
    loaded = read_weights_object(path)
    return loaded if path.suffix.lower() in SAFETENSORS_SUFFIXES else _tensors_from_loaded_object(path, loaded)


def read_weights_object(path: Path) -> object:
    """A weights file's top-level object, never executing pickled code: the tensors of a .safetensors, or
    the unpickled object of a pickle file as it is (nested dicts such as Real-ESRGAN's `{"params_ema": ...}`
    kept for callers that unwrap them their own way)."""
    path = Path(path)
    _check_exists(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return read_pickle_checkpoint(path)
    raise CheckpointReadError(path, f"unsupported file type '{path.suffix}'")


def read_key_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape without loading tensor data for .safetensors (only the JSON header is parsed).

    This keeps classifying a folder of multi-GB checkpoints fast; pickle-based files have no
    separate header, so they are fully (but safely) loaded.
    """
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        try:
            with safe_open(path, framework="pt", device="cpu") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except SafetensorError as error:
            raise CheckpointReadError(path, _describe_safetensors_error(error)) from error
        except (OSError, ValueError, RuntimeError) as error:
            raise CheckpointReadError(path, f"corrupt safetensors file ({error})") from error
    return {key: tuple(tensor.shape) for key, tensor in read_state_dict(path).items()}


def read_metadata(path: Path) -> dict[str, str]:
    """The safetensors ``__metadata__`` block (training info, kohya ss_* keys); {} for other formats."""
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except SafetensorError as error:
        raise CheckpointReadError(path, _describe_safetensors_error(error)) from error
    except (OSError, ValueError, RuntimeError) as error:
        raise CheckpointReadError(path, f"corrupt safetensors file ({error})") from error


# ComfyUI's "fp8_scaled" files (e.g. sd3.5_large_fp8_scaled, t5xxl_fp8_e4m3fn_scaled) store each linear weight
# as float8 next to a `<module>.scale_weight` factor, plus `scale_input` factors for fp8 matmuls and a
# `scaled_fp8` marker tensor.
SCALED_FP8_MARKER = "scaled_fp8"


def dequantize_scaled_fp8(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scaled-fp8 weights as ordinary float32 weights (weight * scale_weight); markers and input scales
    dropped. Files without scales come back unchanged (plain fp8 files are upcast by the caller's cast)."""
    if not any(key.endswith(".scale_weight") or key.rsplit(".", 1)[-1] == SCALED_FP8_MARKER for key in state_dict):
        return state_dict
    plain: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        last = key.rsplit(".", 1)[-1]
        if last in (SCALED_FP8_MARKER, "scale_weight", "scale_input"):
            continue
        scale = state_dict.get(key[: -len("weight")] + "scale_weight") if key.endswith("weight") else None
        plain[key] = value.float() * scale.float() if scale is not None else value
    return plain


FLOAT8_DTYPES = frozenset({torch.float8_e4m3fn, torch.float8_e5m2})


def upcast_float8(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], bool]:
    """Plain fp8 files (flux1-dev-fp8, t5xxl_fp8_e4m3fn): float8 tensors as `dtype`, before any conversion
    (diffusers' converters concatenate tensors, which float8 does not support on every device); True when
    the file held float8 tensors, so the loader can say the weights are fp8-quality."""
    if not any(tensor.dtype in FLOAT8_DTYPES for tensor in state_dict.values()):
        return state_dict, False
    return {key: tensor.to(dtype) if tensor.dtype in FLOAT8_DTYPES else tensor
            for key, tensor in state_dict.items()}, True
