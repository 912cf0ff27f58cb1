"""Auto-captioning training images: a BLIP model when one loads, the template otherwise, and always a note why.

The BLIP path runs a real (tiny, randomly initialised) ``BlipForConditionalGeneration`` with a real
``BlipProcessor`` (BERT tokenizer over a small vocabulary), saved to a folder and loaded from it offline,
exactly as a downloaded model would be. Its output layer is biased towards one word so that the
generated description is known in advance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from webui.security.network import HubDisabled, NetworkPolicy
from webui.training.captioning import (
    CaptionResult,
    caption_images,
    template_caption,
    write_caption_files,
)

ROOT = Path(__file__).resolve().parents[2]
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "dog", "red", "circle",
              "on", "grass", "blue", "background"]


@pytest.fixture
def images(tmp_path) -> list[Path]:
    paths = []
    for index, color in enumerate([(200, 30, 30), (30, 30, 200), (30, 200, 30)]):
        path = tmp_path / "train" / f"img_{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (48, 40), color).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A BLIP captioner at toy size whose decoder always prefers the word "dog"."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("blip") / "tiny-blip"
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(VOCABULARY)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        output_bias = model.text_decoder.cls.predictions.bias
        output_bias.zero_()
        output_bias[VOCABULARY.index("dog")] = 1e4
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_blip_model_from_a_local_folder_captions_with_the_trigger_in_front(images, tiny_blip):
    result = caption_images(images, trigger="sks", class_word="dog", model_dir=tiny_blip, max_new_tokens=4)
    assert isinstance(result, CaptionResult)
    assert result.source == "tiny-blip" and result.notes == []
    assert list(result.captions) == images
    for caption in result.captions.values():
        words = caption.split(", ", 1)
        assert words[0] == "sks"
        assert words[1] == "dog dog dog dog"  # what the biased decoder generates, up to max_new_tokens
    assert all(caption != "sks, a dog" for caption in result.captions.values())


def test_unreadable_image_gets_the_template_and_a_note(images, tiny_blip):
    broken = images[0].with_name("broken.png")
    broken.write_bytes(b"not a png")
    result = caption_images([broken, images[1]], trigger="sks", class_word="dog", model_dir=tiny_blip,
                            max_new_tokens=2)
    assert result.captions[broken] == "sks, a dog"
    assert result.captions[images[1]] == "sks, dog dog"
    assert len(result.notes) == 1 and "broken.png" in result.notes[0]


def test_no_model_falls_back_to_the_template_and_says_so(images):
    result = caption_images(images, trigger="sks", class_word="dog")
    assert result.source == "template"
    assert result.captions == {path: "sks, a dog" for path in images}
    assert len(result.notes) == 1 and "no captioning model" in result.notes[0]


def test_model_that_fails_to_load_falls_back_with_the_reason(images, tmp_path):
    missing = caption_images(images, trigger="sks", class_word="cat", model_dir=tmp_path / "no-such-model",
                             template="photo of {trigger} {class}")
    assert missing.source == "template"
    assert set(missing.captions.values()) == {"photo of sks cat"}
    assert "no-such-model" in missing.notes[0] and "could not be loaded" in missing.notes[0]

    not_a_model = tmp_path / "empty-model"
    not_a_model.mkdir()
    empty = caption_images(images, trigger="sks", class_word="cat", model_dir=not_a_model)
    assert empty.source == "template" and "could not be loaded" in empty.notes[0]

    bad_id = caption_images(images, trigger="sks", class_word="cat", model_id="not a valid hub id!",
                            network=NetworkPolicy(allow_hub=True))
    assert bad_id.source == "template" and "not a valid hub id!" in bad_id.notes[0]


def test_a_hub_id_is_refused_without_allow_hub_before_anything_is_looked_up(images, tmp_path):
    """The default server never reaches the Hub for a caption model: a clear refusal, no template fallback."""
    for policy in ({}, {"network": NetworkPolicy()}):
        with pytest.raises(HubDisabled, match="--allow-hub") as refused:
            caption_images(images, trigger="sks", class_word="cat", model_id="Salesforce/blip-image-captioning-base",
                           **policy)
        assert "Salesforce/blip-image-captioning-base" in str(refused.value) and "models/" in str(refused.value)
    assert not any(path.with_suffix(".txt").exists() for path in images)


def test_hub_id_while_offline_falls_back_quickly_with_the_reason(images, tmp_path):
    """A fresh interpreter with HF_HUB_OFFLINE=1 and an empty Hub cache, as on an offline machine."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from webui.training.captioning import caption_images\n"
        "from webui.security.network import NetworkPolicy\n"
        "result = caption_images([Path(p) for p in sys.argv[1:]], trigger='sks', class_word='dog',\n"
        "                        model_id='Salesforce/blip-image-captioning-base',\n"
        "                        network=NetworkPolicy(allow_hub=True))\n"
        "print(json.dumps({'source': result.source, 'notes': result.notes,\n"
        "                  'captions': sorted(set(result.captions.values()))}))\n"
    )
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT))
    completed = subprocess.run([sys.executable, "-c", script, *map(str, images)], cwd=ROOT, env=environment,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["source"] == "template" and result["captions"] == ["sks, a dog"]
    assert "Salesforce/blip-image-captioning-base" in result["notes"][0]
    assert "HF_HUB_OFFLINE" in result["notes"][0]


def test_template_checks_its_fields():
    assert template_caption("{trigger}, a {class}", "sks", "dog") == "sks, a dog"
    assert template_caption("{trigger}, a {class}", "", "dog") == "a dog"
    with pytest.raises(ValueError, match="only use"):
        template_caption("{trigger} {style}", "sks", "dog")


def test_caption_files_are_written_beside_images_without_clobbering_edits(images):
    images[0].with_suffix(".txt").write_text("hand-written caption\n", encoding="utf-8")
    captions = {path: f"sks, caption {index}" for index, path in enumerate(images)}
    written = write_caption_files(captions)
    assert written == [images[1].with_suffix(".txt"), images[2].with_suffix(".txt")]
    assert images[0].with_suffix(".txt").read_text(encoding="utf-8") == "hand-written caption\n"
    assert images[2].with_suffix(".txt").read_text(encoding="utf-8") == "sks, caption 2\n"
    write_caption_files(captions, extension=".caption", overwrite=True)
    assert images[0].with_suffix(".caption").read_text(encoding="utf-8") == "sks, caption 0\n"


@pytest.mark.parametrize("extension", [".json", ".pth", ".png", "", "txt", "/../x.txt"])
def test_captions_are_only_ever_written_as_txt_or_caption_files(images, extension):
    before = sorted(path.name for path in images[0].parent.iterdir())
    with pytest.raises(ValueError, match="caption_extension"):
        write_caption_files({images[0]: "API_KEY=overwritten"}, extension=extension, overwrite=True)
    assert sorted(path.name for path in images[0].parent.iterdir()) == before

