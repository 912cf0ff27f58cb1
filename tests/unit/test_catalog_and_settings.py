"""Catalog scanning/classification/hash cache, and the launch.py command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import webui.models.hashing as hashing
from webui.models.catalog import CheckpointCatalog
from webui.models.hashing import HashCache
from webui.settings import PROJECT_ROOT, SettingsError, settings_from_args


def write_fake_ldm(path, text_keys: dict[str, tuple[int, ...]], in_channels: int = 4) -> None:
    tensors = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, in_channels, 3, 3),
               "first_stage_model.decoder.conv_out.weight": torch.zeros(3, 128, 3, 3)}
    tensors.update({key: torch.zeros(shape) for key, shape in text_keys.items()})
    save_file(tensors, str(path))


SD1_TEXT = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (8, 768)}
SD2_TEXT = {"cond_stage_model.model.token_embedding.weight": (8, 1024),
            "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (3072, 1024)}
SDXL_TEXT = {"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (8, 768),
             "conditioner.embedders.1.model.token_embedding.weight": (8, 1280),
             "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (3840, 1280)}


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "Stable-diffusion"
    (root / "sub").mkdir(parents=True)
    write_fake_ldm(root / "one.safetensors", SD1_TEXT)
    write_fake_ldm(root / "sub" / "two.safetensors", SD2_TEXT)
    write_fake_ldm(root / "xl.safetensors", SDXL_TEXT)
    write_fake_ldm(root / "inpaint.safetensors", SD1_TEXT, in_channels=9)
    (root / "notes.txt").write_text("not a model")
    (root / "half.safetensors").write_bytes((root / "one.safetensors").read_bytes()[:100])
    return root


def test_scan_classifies_architectures_and_explains_broken_files(folder, tmp_path):
    catalog = CheckpointCatalog(folder, HashCache(tmp_path / "hashes.json"))
    records = {record.name: record for record in catalog.refresh()}
    assert set(records) == {"one", "sub/two", "xl", "inpaint", "half"}
    assert records["one"].architecture.label == "SD1.x"
    assert records["sub/two"].architecture.family == "sd2"
    assert records["xl"].architecture.family == "sdxl"
    assert records["inpaint"].architecture.unet_in_channels == 9
    assert not records["half"].usable and "half.safetensors" in records["half"].error
    assert [r.name for r in catalog.usable_records()] == ["inpaint", "one", "sub/two", "xl"]


def test_titles_use_a1111_shorthash_computed_once_and_cached_on_disk(folder, tmp_path, monkeypatch):
    calls = []
    real = hashing.sha256_of_file
    monkeypatch.setattr(hashing, "sha256_of_file", lambda path, *a: calls.append(path) or real(path, *a))
    catalog = CheckpointCatalog(folder, HashCache(tmp_path / "hashes.json"))
    catalog.refresh()
    record = catalog.with_hash(catalog.find("one"))
    import hashlib

    expected = hashlib.sha256((folder / "one.safetensors").read_bytes()).hexdigest()
    assert record.sha256 == expected and record.title == f"one [{expected[:10]}]"
    assert catalog.find(f"one [{expected[:10]}]").path == record.path
    assert catalog.find(expected[:10]).path == record.path
    # A new catalog (an app restart) reuses the cached hash without reading the file again.
    restarted = CheckpointCatalog(folder, HashCache(tmp_path / "hashes.json"))
    assert restarted.refresh() and restarted.find("one").title == record.title
    assert len(calls) == 1
    # Changing the file invalidates the cached hash.
    write_fake_ldm(folder / "one.safetensors", {**SD1_TEXT, "extra": (2,)})
    assert HashCache(tmp_path / "hashes.json").cached(folder / "one.safetensors") is None


def test_unknown_name_lists_available_models(folder, tmp_path):
    catalog = CheckpointCatalog(folder, HashCache(tmp_path / "hashes.json"))
    catalog.refresh()
    with pytest.raises(LookupError, match="available: .*one"):
        catalog.find("nope")


def test_a_hub_repo_id_is_refused_without_allow_hub_and_names_the_checkpoint_folder(folder, tmp_path):
    from webui.security.network import HubDisabled, NetworkPolicy

    for catalog in (CheckpointCatalog(folder, HashCache(tmp_path / "hashes.json")),
                    CheckpointCatalog(folder, HashCache(tmp_path / "hashes.json"), NetworkPolicy(allow_hub=False))):
        for call in (catalog.check_available, catalog.find_or_fetch):
            with pytest.raises(HubDisabled, match="--allow-hub") as refused:
                call("someone/some-model")
            assert str(folder) in str(refused.value) and isinstance(refused.value, LookupError)
        assert not (folder / "someone--some-model").exists()
        assert catalog.check_available("sub/two").name == "sub/two"  # a local folder that looks like an id
        with pytest.raises(LookupError, match="available"):
            catalog.check_available("not-here")
    allowed = CheckpointCatalog(folder, HashCache(tmp_path / "hashes.json"), NetworkPolicy(allow_hub=True))
    assert allowed.check_available("someone/some-model") is None  # would be downloaded by find_or_fetch


def test_settings_flags_config_and_safe_defaults(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"sd_model_checkpoint": "one", "checkpoints_in_ram": 3}))
    settings = settings_from_args(["--data-dir", str(tmp_path), "--auth", "a:b,c:d", "--port", "7999"])
    assert settings.host == "127.0.0.1" and settings.port == 7999
    assert settings.auth == (("a", "b"), ("c", "d"))
    assert settings.checkpoints_in_ram == 3 and settings.extra["sd_model_checkpoint"] == "one"
    assert settings.checkpoint_folder == tmp_path / "models" / "Stable-diffusion"
    assert settings.outputs_folder == tmp_path / "outputs"
    assert settings.datasets_folder == tmp_path / "datasets" and settings.training_folder == tmp_path / "training"
    assert settings.allow_hub is False and settings_from_args(["--allow-hub"]).allow_hub is True
    assert settings_from_args(["--listen"]).host == "0.0.0.0"
    assert settings_from_args(["--nowebui"]).serve_api and not settings_from_args(["--nowebui"]).serve_ui
    custom = settings_from_args(["--ckpt-dir", str(tmp_path / "ck"), "--outputs-dir", str(tmp_path / "o")])
    assert custom.checkpoint_folder == tmp_path / "ck" and custom.outputs_folder == tmp_path / "o"
    assert settings.text_encoder_folder == tmp_path / "models" / "text_encoder"
    assert settings_from_args(["--text-encoder-dir", str(tmp_path / "te")]).text_encoder_folder == tmp_path / "te"
    assert settings.denoiser_folders == (tmp_path / "models" / "unet", tmp_path / "models" / "diffusion_models")
    assert settings_from_args(["--unet-dir", str(tmp_path / "u")]).denoiser_folders == (tmp_path / "u",)
    auth_file = tmp_path / "users.txt"
    auth_file.write_text("x:y\nz:w\n")
    assert settings_from_args(["--auth-file", str(auth_file)]).auth == (("x", "y"), ("z", "w"))
    with pytest.raises(SettingsError, match="user:password"):
        settings_from_args(["--auth", "nopassword"])
    with pytest.raises(SystemExit):
        settings_from_args(["--device", "tpu"])


def test_help_lists_every_documented_flag_without_installing_or_touching_cuda():
    output = subprocess.run([sys.executable, str(PROJECT_ROOT / "launch.py"), "--help"], capture_output=True,
                            text=True, timeout=60).stdout
    for flag in ("--listen", "--port", "--share", "--api", "--nowebui", "--data-dir", "--ckpt-dir", "--lora-dir",
                 "--vae-dir", "--text-encoder-dir", "--embeddings-dir", "--outputs-dir", "--device", "--precision", "--auth",
                 "--auth-file", "--skip-install", "--allow-hub", "--unet-dir"):
        assert flag in output
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "| `--allow-hub` |" in readme and "| `--unet-dir DIR` |" in readme
    assert "python3 launch.py" in readme and "python3 run_tests.py" in readme


def test_importing_the_engine_needs_no_gradio_and_touches_no_cuda():
    code = ("import sys, webui.context, webui.generation.txt2img, webui.models.manager;"
            "assert 'gradio' not in sys.modules and 'fastapi' not in sys.modules;"
            "import torch; assert not torch.cuda.is_initialized()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT_ROOT, timeout=120)
