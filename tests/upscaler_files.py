"""Tiny random upscaler models written as REAL files, in the layouts people download them in.

Shared by the upscaler tests (engine, API, UI): each writer builds a small model of one architecture with
spandrel's own classes (so spandrel must detect it the way it detects the real downloads), saves it in that
architecture's usual file layout, and returns the path. Files are a few KB to a few MB; build them in tmp
folders inside fixtures, never commit them.

- `write_esrgan_old`: A1111's classic ESRGAN `.pth` (`model.0.weight`, `model.1.sub.N.RDBk...`).
- `write_esrgan_new`: the BasicSR/Real-ESRGAN key layout (`conv_first`, `body.N.rdbK`, `conv_up1`, ...).
- `write_realesrgan`: Real-ESRGAN's `{"params_ema": {...new layout...}}` `.pth`.
- `write_compact`: Real-ESRGAN's compact SRVGG (`body.N`), as `.safetensors` or `{"params": ...}` `.pth`.
- `write_swinir`, `write_dat`: transformer upscalers (`.pth` / `.safetensors`).
- `write_unknown_architecture`: a valid `.safetensors` no architecture claims.
- `write_code_pickle`: a `.pth` whose unpickling needs the class `LeavesMarker` (it must be refused unrun).
- `write_corrupt`: bytes that are no weights file at all.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from webui.upscaling.spandrel_architectures import load_architectures


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone().contiguous() for key, value in state.items()}


def _rrdb_state(scale: int, seed: int) -> dict[str, torch.Tensor]:
    """A 1-block, 8-filter RRDB ESRGAN in the old (A1111 ESRGAN) key layout."""
    load_architectures()
    from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet

    _seeded(seed)
    model = RRDBNet(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    return _contiguous(model.state_dict())


def old_to_new_esrgan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights in BasicSR's RRDBNet names, as Real-ESRGAN and newer ESRGAN releases ship them."""
    blocks = max(int(m.group(1)) for key in state if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", key)))
    sequence = sorted({int(key.split(".")[1]) for key in state if key.split(".")[1] != "1"})
    # model.0 = conv_first; then every 3rd index an up-conv; the last two are conv_hr and conv_last
    tail = {sequence[-2]: "conv_hr", sequence[-1]: "conv_last"}
    new: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        index = int(parts[1])
        if index == 0:
            new[f"conv_first.{parts[-1]}"] = value
        elif index == 1:
            match = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key)
            if match:
                new[f"body.{match.group(1)}.rdb{match.group(2)}.conv{match.group(3)}.{match.group(4)}"] = value
            elif int(parts[3]) == blocks + 1:
                new[f"conv_body.{parts[-1]}"] = value
            else:
                raise ValueError(f"unexpected ESRGAN key {key}")
        elif index in tail:
            new[f"{tail[index]}.{parts[-1]}"] = value
        else:
            new[f"conv_up{index // 3}.{parts[-1]}"] = value
    return new


def _write_params(state: dict[str, torch.Tensor], path: Path) -> Path:
    """`.safetensors` as is, a `.pth` the way Real-ESRGAN's and BasicSR's files wrap it (`{"params": ...}`)."""
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"params": state}, path)
    return path


def write_esrgan_old(path: Path, scale: int = 4, seed: int = 0) -> Path:
    torch.save(_rrdb_state(scale, seed), path)
    return path


def write_esrgan_new(path: Path, scale: int = 4, seed: int = 0) -> Path:
    state = old_to_new_esrgan(_rrdb_state(scale, seed))
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def write_realesrgan(path: Path, scale: int = 4, seed: int = 0) -> Path:
    torch.save({"params_ema": old_to_new_esrgan(_rrdb_state(scale, seed))}, path)
    return path


def write_compact(path: Path, scale: int = 2, seed: int = 0) -> Path:
    """Real-ESRGAN's SRVGGNetCompact (realesr-general-x4v3 style), 8 features, 2 convs."""
    load_architectures()
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    _seeded(seed)
    state = _contiguous(SRVGGNetCompact(num_feat=8, num_conv=2, upscale=scale).state_dict())
    return _write_params(state, path)


def write_swinir(path: Path, scale: int = 2, seed: int = 0) -> Path:
    """A one-layer SwinIR (classic pixelshuffle upsampler), window 8."""
    load_architectures()
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    _seeded(seed)
    model = SwinIR(img_size=32, embed_dim=12, depths=[1], num_heads=[2], window_size=8, mlp_ratio=2.0,
                   upscale=scale, upsampler="pixelshuffle", resi_connection="1conv")
    state = _contiguous(model.state_dict())
    return _write_params(state, path)


def write_dat(path: Path, scale: int = 2, seed: int = 0) -> Path:
    """A one-group DAT."""
    load_architectures()
    from spandrel.architectures.DAT.__arch.DAT import DAT

    _seeded(seed)
    model = DAT(img_size=16, embed_dim=32, split_size=[2, 4], depth=[2], num_heads=[2], expansion_factor=2.0,
                upscale=scale)
    state = _contiguous(model.state_dict())
    return _write_params(state, path)


def write_unknown_architecture(path: Path) -> Path:
    """Weights no spandrel architecture claims (a plain two-layer network)."""
    _seeded(0)
    save_file({"encoder.layer1.weight": torch.randn(4, 4), "encoder.layer2.weight": torch.randn(4, 4)}, str(path))
    return path


class LeavesMarker:
    """The class the pickle in `write_code_pickle` needs: building it writes `path`, proof that its code ran."""

    def __init__(self, path: str) -> None:
        Path(path).write_text("the pickle's code ran", encoding="utf-8")


class _BuildsLeavesMarkerWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (LeavesMarker, (self.marker,))


def write_code_pickle(path: Path, marker: Path) -> Path:
    """A `.pth` that looks like a model but whose unpickling builds a `LeavesMarker(marker)`."""
    state = _rrdb_state(2, 0)
    state["model.0.extra"] = _BuildsLeavesMarkerWhenUnpickled(marker)  # type: ignore[assignment]
    torch.save(state, path)
    return path


def write_corrupt(path: Path) -> Path:
    path.write_bytes(b"PK\x03\x04 not really a torch archive" + bytes(range(64)))
    return path
