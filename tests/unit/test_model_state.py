"""ModelState keys and weight patches as data, without loading a model."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from webui.models.catalog import CheckpointRecord
from webui.models.hashing import HashCache
from webui.models.lora_catalog import LoraUse
from webui.models.lora_formats import KIND_DIFF, KIND_LORA, LoraPatch
from webui.models.patches import PatchSet, WeightPatcher, weight_patches
from webui.models.state import build_state

REPOSITORY = Path(__file__).resolve().parents[2]


def _file(path: Path, seed: int, size: int = 4096) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(seed),
                                   dtype=torch.uint8).numpy().tobytes())
    return path


def _files(root: Path) -> dict[str, Path]:
    return {
        "model": _file(root / "Stable-diffusion" / "model.safetensors", 1),
        "other": _file(root / "Stable-diffusion" / "other.safetensors", 2),
        "vae": _file(root / "VAE" / "soft.safetensors", 3),
        "vae2": _file(root / "VAE" / "sharp.safetensors", 4),
        "a": _file(root / "Lora" / "a.safetensors", 5),
        "b": _file(root / "Lora" / "b.safetensors", 6),
    }


def _record(path: Path) -> CheckpointRecord:
    return CheckpointRecord(name=path.stem, path=path, format="safetensors", architecture=None)


def _state(files: dict[str, Path], hashes: HashCache, checkpoint="model", vae="vae", loras=(("a", 1.0, 1.0),)):
    uses = [LoraUse(name, files[name], te, unet, "") for name, te, unet in loras]
    return build_state(_record(files[checkpoint]), hashes, uses, files[vae] if vae else None)


def test_equal_states_have_equal_keys_even_in_another_process_and_folder(tmp_path):
    files = _files(tmp_path / "one")
    key = _state(files, HashCache(tmp_path / "hashes.json")).key()
    assert _state(files, HashCache(tmp_path / "hashes.json")).key() == key
    # The same files copied elsewhere (another machine's folders, other names) are the same state.
    moved = tmp_path / "two"
    shutil.copytree(tmp_path / "one", moved)
    os.rename(moved / "Lora" / "a.safetensors", moved / "Lora" / "renamed.safetensors")
    program = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from webui.models.catalog import CheckpointRecord\n"
        "from webui.models.hashing import HashCache\n"
        "from webui.models.lora_catalog import LoraUse\n"
        "from webui.models.state import build_state\n"
        "root = Path(sys.argv[1])\n"
        "record = CheckpointRecord('model', root / 'Stable-diffusion/model.safetensors', 'safetensors', None)\n"
        "lora = LoraUse('renamed', root / 'Lora/renamed.safetensors', 1.0, 1.0, '')\n"
        "state = build_state(record, HashCache(root / 'h.json'), [lora], root / 'VAE/soft.safetensors')\n"
        "print(json.dumps(state.key()))\n"
    )
    output = subprocess.run([sys.executable, "-c", program, str(moved)], cwd=REPOSITORY, check=True,
                            capture_output=True, text=True).stdout
    assert json.loads(output) == key


def test_keys_differ_for_checkpoint_vae_lora_weight_and_order(tmp_path):
    files, hashes = _files(tmp_path), HashCache(tmp_path / "hashes.json")
    base = _state(files, hashes, loras=(("a", 1.0, 1.0), ("b", 0.5, 0.5)))
    variants = [
        _state(files, hashes, checkpoint="other", loras=(("a", 1.0, 1.0), ("b", 0.5, 0.5))),
        _state(files, hashes, vae="vae2", loras=(("a", 1.0, 1.0), ("b", 0.5, 0.5))),
        _state(files, hashes, vae=None, loras=(("a", 1.0, 1.0), ("b", 0.5, 0.5))),
        _state(files, hashes, loras=(("a", 1.0, 1.0), ("b", 0.5, 0.6))),   # a UNet weight
        _state(files, hashes, loras=(("a", 0.9, 1.0), ("b", 0.5, 0.5))),   # a text-encoder weight
        _state(files, hashes, loras=(("b", 0.5, 0.5), ("a", 1.0, 1.0))),   # the order of merging
        _state(files, hashes, loras=(("a", 1.0, 1.0),)),
    ]
    keys = [state.key() for state in variants]
    assert base.key() not in keys and len(set(keys)) == len(keys)
    # The file's content, not its name or modification time, is what counts.
    _file(files["b"], 7)
    assert _state(files, hashes, loras=(("a", 1.0, 1.0), ("b", 0.5, 0.5))).key() != base.key()
    assert dataclasses.replace(base).key() == base.key()
    assert [use.name for use in base.lora_uses] == ["a", "b"]
    assert base.lora_uses[0].shorthash == hashes.sha256(files["a"])[:12]


def _update(target: str, seed: int, kind: str = KIND_LORA) -> LoraPatch:
    generator = torch.Generator().manual_seed(seed)
    if kind == KIND_DIFF:
        tensors = {"diff": torch.randn(3, 4, generator=generator), "diff_b": torch.randn(3, generator=generator)}
    else:
        tensors = {"down": torch.randn(2, 4, generator=generator), "up": torch.randn(3, 2, generator=generator)}
    return LoraPatch(target=target, kind=kind, tensors=tensors, alpha=None, rank=2)


def test_weight_patches_merge_from_kept_originals_and_apply_twice_is_a_no_op():
    torch.manual_seed(0)
    modules = {"unet": torch.nn.Sequential(torch.nn.Linear(4, 3)), "text_encoder": torch.nn.Sequential(torch.nn.Linear(4, 3))}
    original = {name: {k: v.clone() for k, v in module.state_dict().items()} for name, module in modules.items()}
    updates = [_update("unet.0", 1), _update("text_encoder.0", 2, KIND_DIFF)]
    patcher = WeightPatcher(modules)
    patches = weight_patches(updates, te_strength=0.0, unet_strength=1.0, source="file@1")
    assert [(patch.target, patch.parameter) for patch in patches] == [("unet.0", "weight")]  # TE strength 0: untouched
    patches = weight_patches(updates, te_strength=0.5, unet_strength=1.0, source="file@1")
    assert [(patch.target, patch.parameter) for patch in patches] == [
        ("unet.0", "weight"), ("text_encoder.0", "weight"), ("text_encoder.0", "bias")]
    assert patcher.apply(patches) is True
    diff = updates[1].tensors
    assert torch.allclose(modules["text_encoder"][0].bias, original["text_encoder"]["0.bias"] + 0.5 * diff["diff_b"])
    assert torch.allclose(modules["text_encoder"][0].weight, original["text_encoder"]["0.weight"] + 0.5 * diff["diff"])
    up, down = updates[0].tensors["up"], updates[0].tensors["down"]
    assert torch.allclose(modules["unet"][0].weight, original["unet"]["0.weight"] + up @ down, atol=1e-6)
    # Equal keys (same source, targets and strengths) are recognised without comparing tensors.
    again = weight_patches(updates, te_strength=0.5, unet_strength=1.0, source="file@1")
    assert PatchSet(again).key() == PatchSet(patches).key() and patcher.apply(again) is False
    assert PatchSet(weight_patches(updates, 0.5, 1.0, source="file@2")).key() != PatchSet(patches).key()
    for strength in (2.0, -1.0, 0.25):
        patcher.apply(weight_patches(updates, strength, strength, source="file@1"))
    patcher.restore()
    for name, module in modules.items():
        assert all(torch.equal(value, original[name][key]) for key, value in module.state_dict().items())
    assert patcher.active == ()
