"""Sharing a training run: the Hub model card and the upload.

The card is checked as the Hub and a reader see it: its YAML header parsed with PyYAML, the usage
snippets, the settings table and the sample grid image. The upload never touches the network: each
test passes a fake ``HfApi`` that records the calls (or raises the errors the real client raises), the
only thing faked in this file.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image

from webui.security.network import HubDisabled, NetworkPolicy
from webui.training.export import LoraLayerWeights, save_embedding, save_kohya_lora
from webui.training.hub_upload import HubUploadError, upload_to_hub
from webui.training.model_card import write_model_card


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    header, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(header)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.new("RGB", size, color)


@pytest.fixture
def lora_run(tmp_path) -> Path:
    """A LoRA run's output folder with a real kohya file in it."""
    layer = LoraLayerWeights(down=torch.ones(2, 8), up=torch.ones(8, 2), alpha=2.0)
    save_kohya_lora(tmp_path / "red-circles.safetensors",
                    {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": layer}, {}, "sd1")
    return tmp_path


# --------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------


def test_lora_card_has_hub_header_usage_settings_and_sample_grid(lora_run):
    samples = [solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255)), solid((255, 255, 0), (64, 48))]
    card_path = write_model_card(
        lora_run, name="red-circles", method="LoRA", base_model="runwayml/stable-diffusion-v1-5",
        trigger_words=["sks circle"], settings={"rank": 16, "learning rate": 1e-4, "steps": 1500,
                                                "scheduler": "cosine | restarts"},
        sample_images=samples, license="creativeml-openrail-m", files=[lora_run / "red-circles.safetensors"],
    )
    assert card_path == lora_run / "README.md"
    card = card_path.read_text(encoding="utf-8")
    header = front_matter(card)
    assert header["license"] == "creativeml-openrail-m"
    assert header["base_model"] == "runwayml/stable-diffusion-v1-5"
    assert {"stable-diffusion", "lora", "text-to-image", "diffusers"} <= set(header["tags"])
    assert header["instance_prompt"] == "sks circle"
    assert header["widget"][0]["output"]["url"] == "samples.png"

    assert "<lora:red-circles:0.8> sks circle" in card
    assert 'pipe.load_lora_weights(".", weight_name="red-circles.safetensors")' in card
    assert 'from_pretrained("runwayml/stable-diffusion-v1-5"' in card
    assert "| rank | 16 |" in card and "| learning rate | 0.0001 |" in card
    assert "| scheduler | cosine \\| restarts |" in card  # a pipe in a value must not break the table
    assert "![samples](samples.png)" in card
    assert "| `red-circles.safetensors` |" in card

    grid = Image.open(lora_run / "samples.png")
    assert grid.size == (64, 64)  # 4 images of 32x32 (the odd-sized one resized) in a 2x2 grid
    assert grid.getpixel((5, 5)) == (255, 0, 0) and grid.getpixel((37, 5)) == (0, 255, 0)
    assert grid.getpixel((5, 37)) == (0, 0, 255) and grid.getpixel((37, 37)) == (255, 255, 0)


def test_card_for_an_embedding_and_a_hub_repo_loads_from_the_repo(tmp_path):
    save_embedding(tmp_path / "sks-style.safetensors", torch.ones(2, 768), token="sks-style", step=100)
    card = write_model_card(
        tmp_path / "README.md", name="sks style", method="Textual Inversion", base_model="sd-studio-toy",
        trigger_words=["sks-style"], settings={}, sample_images=[], license="mit",
        files=[Path("sks-style.safetensors")], repo_id="someone/sks-style",
    ).read_text(encoding="utf-8")
    header = front_matter(card)
    assert "textual_inversion" in header["tags"] and "lora" not in header["tags"]
    assert "widget" not in header and not (tmp_path / "samples.png").exists()
    assert "Put `sks-style.safetensors` in `embeddings/`" in card
    assert ('pipe.load_textual_inversion("someone/sks-style", weight_name="sks-style.safetensors", '
            'token="sks-style")') in card
    assert "<lora:" not in card


def test_card_for_a_dreambooth_checkpoint_uses_single_file_loading(tmp_path):
    checkpoint = tmp_path / "my-dog.safetensors"
    checkpoint.write_bytes(b"")  # only the name matters to the card; an unreadable header falls back to SD1
    card = write_model_card(
        tmp_path, name="my-dog", method="dreambooth", base_model="runwayml/stable-diffusion-v1-5",
        trigger_words="sks dog", settings={"prior preservation": True}, sample_images=[solid((9, 9, 9))],
        license="creativeml-openrail-m", files=[checkpoint],
    ).read_text(encoding="utf-8")
    assert front_matter(card)["instance_prompt"] == "sks dog"
    assert "dreambooth" in front_matter(card)["tags"]
    assert 'StableDiffusionPipeline.from_single_file("my-dog.safetensors"' in card
    assert "Put `my-dog.safetensors` in `models/Stable-diffusion`" in card
    assert "| prior preservation | true |" in card


def test_card_header_survives_quotes_and_colons(tmp_path):
    card = write_model_card(
        tmp_path, name='the "best": lora', method="pivotal tuning", base_model="stabilityai/sdxl: base",
        trigger_words=['<s0><s1>', 'say "hi": now'], settings={}, sample_images=[], license="other", files=[],
    ).read_text(encoding="utf-8")
    header = front_matter(card)
    assert header["instance_prompt"] == '<s0><s1>, say "hi": now'
    assert header["base_model"] == "stabilityai/sdxl: base"
    assert {"lora", "textual_inversion"} <= set(header["tags"])


# --------------------------------------------------------------------------------------------
# Hub upload (fake HfApi: the network is the only thing faked)
# --------------------------------------------------------------------------------------------


HUB_ON = NetworkPolicy(allow_hub=True)  # as with --allow-hub; without it every upload is refused (last test)


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records calls, answers like the Hub, or raises ``error``."""

    def __init__(self, error: BaseException | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.error = error

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if self.error is not None:
            raise self.error
        return _RepoUrl(f"https://huggingface.co/{repo_id}", repo_id)

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")


class _RepoUrl(str):
    """Like huggingface_hub.RepoUrl: a str (the URL) that also carries the repo id."""

    def __new__(cls, url: str, repo_id: str):
        value = super().__new__(cls, url)
        value.repo_id = repo_id
        return value


def test_upload_creates_a_private_repo_then_uploads_the_folder(lora_run):
    api = RecordingApi()
    url = upload_to_hub(lora_run, "someone/red-circles", "hf_secret", network=HUB_ON, api=api)
    assert url == "https://huggingface.co/someone/red-circles"
    (first, create), (second, upload) = api.calls
    assert first == "create_repo" and second == "upload_folder"
    assert create["repo_id"] == "someone/red-circles" and create["exist_ok"] is True
    assert create["private"] is True and create["token"] == "hf_secret"
    assert upload["repo_id"] == "someone/red-circles" and Path(upload["folder_path"]) == lora_run
    assert upload["token"] == "hf_secret"

    public = RecordingApi()
    upload_to_hub(lora_run, "someone/red-circles", "hf_secret", private=False, network=HUB_ON, api=public)
    assert public.calls[0][1]["private"] is False


@pytest.mark.parametrize("token", [None, "", "   "])
def test_upload_without_a_token_says_where_to_get_one(lora_run, token):
    api = RecordingApi()
    with pytest.raises(HubUploadError, match="settings/tokens"):
        upload_to_hub(lora_run, "someone/red-circles", token, network=HUB_ON, api=api)
    assert api.calls == []


@pytest.mark.parametrize("repo_id", ["red-circles", "someone/red circles", "a/b/c", "someone/--bad--"])
def test_upload_to_a_malformed_repo_id_is_refused_before_any_call(lora_run, repo_id):
    api = RecordingApi()
    with pytest.raises(HubUploadError, match="repo id"):
        upload_to_hub(lora_run, repo_id, "hf_secret", network=HUB_ON, api=api)
    assert api.calls == []


def test_upload_network_and_auth_failures_become_clear_errors(lora_run, tmp_path):
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HubUploadError, match="cannot reach the Hugging Face Hub") as down:
        upload_to_hub(lora_run, "someone/red-circles", "hf_secret", network=HUB_ON,
                      api=RecordingApi(ConnectionError("Name or service not known")))
    assert isinstance(down.value, ValueError)
    unauthorized = HfHubHTTPError("401 Client Error: Unauthorized",
                                  response=SimpleNamespace(status_code=401, headers={}, request=None))
    with pytest.raises(HubUploadError, match="rejected the token"):
        upload_to_hub(lora_run, "someone/red-circles", "hf_bad", network=HUB_ON, api=RecordingApi(unauthorized))
    forbidden = HfHubHTTPError("403 Forbidden", response=SimpleNamespace(status_code=403, headers={}, request=None))
    with pytest.raises(HubUploadError, match="may not write to 'someone/red-circles'"):
        upload_to_hub(lora_run, "someone/red-circles", "hf_read_only", network=HUB_ON, api=RecordingApi(forbidden))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HubUploadError, match="empty"):
        upload_to_hub(empty, "someone/red-circles", "hf_secret", network=HUB_ON, api=RecordingApi())


def test_upload_is_refused_before_any_call_unless_the_hub_is_allowed(lora_run):
    from webui.settings import settings_from_args

    api = RecordingApi()
    default = NetworkPolicy.from_settings(settings_from_args(["--data-dir", str(lora_run)]))  # no --allow-hub
    with pytest.raises(HubDisabled, match="--allow-hub") as refused:
        upload_to_hub(lora_run, "someone/red-circles", "hf_secret", network=default, api=api)
    assert api.calls == []
    assert isinstance(refused.value, LookupError)  # 404 over HTTP, like any name that is not here
