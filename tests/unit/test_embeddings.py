"""Textual-inversion embeddings: every file format read back exactly, the folder catalog's sorting into
usable / wrong model / broken, and reversible injection into tiny real CLIP text encoders driven by the
real CLIP tokenizers that ship with the app.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from webui.models.embeddings import (
    Embedding,
    EmbeddingCatalog,
    EmbeddingFileError,
    EmbeddingInjector,
    read_embedding,
)

CONFIGS = Path(__file__).resolve().parents[2] / "webui" / "models" / "model_configs"
CLIP_VOCAB = 49408
TINY_WIDTH = 32
TINY_WIDTH_2 = 48


def _vectors(count: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


def _write_a1111_pt(path: Path, vectors: torch.Tensor, step: int = 1500) -> Path:
    """The dict A1111's textual inversion trainer saves (the vector still requires grad)."""
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": vectors.clone().requires_grad_(True)},
            "name": "name-inside-the-file",
            "step": step,
            "sd_checkpoint": "a1b2c3d4",
            "sd_checkpoint_name": "v1-5-pruned-emaonly",
        },
        path,
    )
    return path


def _write_kohya(path: Path, vectors: torch.Tensor) -> Path:
    save_file({"emb_params": vectors.contiguous()}, str(path))
    return path


def _write_sdxl(path: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, str(path))
    return path


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def test_a1111_pt_multi_vector_reads_back_exactly(tmp_path):
    vectors = _vectors(3, 768, seed=1)
    embedding = read_embedding(_write_a1111_pt(tmp_path / "MyStyle.pt", vectors, step=1500))
    assert embedding.name == "MyStyle"  # the file name, not the "name" stored inside, as in A1111
    assert embedding.path == tmp_path / "MyStyle.pt"
    assert embedding.step == 1500
    assert embedding.vector_count == 3
    assert embedding.width() == {"te1": 768}
    assert torch.equal(embedding.vectors["te1"], vectors)
    assert not embedding.vectors["te1"].requires_grad


@pytest.mark.parametrize("shape", [(768,), (2, 768)])
def test_diffusers_bin_reads_one_and_many_vectors(tmp_path, shape):
    tensor = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    torch.save({"<cat-toy>": tensor}, tmp_path / "cat-toy.bin")
    embedding = read_embedding(tmp_path / "cat-toy.bin")
    assert embedding.name == "cat-toy"
    assert embedding.step is None
    assert torch.equal(embedding.vectors["te1"], tensor.reshape(-1, 768))


def test_kohya_safetensors_and_diffusers_safetensors(tmp_path):
    kohya_vectors = _vectors(4, 1024, seed=3)
    kohya = read_embedding(_write_kohya(tmp_path / "sd2-style.safetensors", kohya_vectors))
    assert kohya.width() == {"te1": 1024} and kohya.vector_count == 4
    assert torch.equal(kohya.vectors["te1"], kohya_vectors)

    token_vector = _vectors(1, 768, seed=4)[0]
    save_file({"<sks>": token_vector}, str(tmp_path / "sks.safetensors"))
    diffusers_style = read_embedding(tmp_path / "sks.safetensors")
    assert torch.equal(diffusers_style.vectors["te1"], token_vector.unsqueeze(0))


def test_sdxl_embedding_has_vectors_for_both_encoders(tmp_path):
    clip_l, clip_g = _vectors(2, 768, seed=5), _vectors(2, 1280, seed=6)
    embedding = read_embedding(_write_sdxl(tmp_path / "xl-style.safetensors", clip_l, clip_g))
    assert embedding.width() == {"te1": 768, "te2": 1280}
    assert torch.equal(embedding.vectors["te1"], clip_l)
    assert torch.equal(embedding.vectors["te2"], clip_g)


def test_sdxl_embedding_with_unequal_vector_counts_is_refused(tmp_path):
    path = _write_sdxl(tmp_path / "odd.safetensors", _vectors(2, 768, 7), _vectors(3, 1280, 8))
    with pytest.raises(EmbeddingFileError, match="clip_l has 2 vectors but clip_g has 3"):
        read_embedding(path)


def test_non_embedding_files_are_refused_with_what_was_found(tmp_path):
    lora = tmp_path / "some-lora.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4),
        },
        str(lora),
    )
    with pytest.raises(EmbeddingFileError) as caught:
        read_embedding(lora)
    assert "some-lora.safetensors" in str(caught.value)
    assert "LoRA" in str(caught.value) and "lora_down" in str(caught.value)

    two_params = tmp_path / "two.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 768), "&": torch.zeros(1, 768)}}, two_params)
    with pytest.raises(EmbeddingFileError, match="exactly one tensor, found 2"):
        read_embedding(two_params)


def test_pickle_needing_code_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}, "trainer": SimpleNamespace(lr=1)}, path)
    with pytest.raises(EmbeddingFileError, match="refused"):
        read_embedding(path)


# --------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------


def test_catalog_sorts_embeddings_into_usable_wrong_model_and_broken(tmp_path):
    folder = tmp_path / "embeddings"
    (folder / "styles").mkdir(parents=True)
    _write_a1111_pt(folder / "sd1-a.pt", _vectors(1, 768, 10))
    _write_kohya(folder / "styles" / "sd1-b.safetensors", _vectors(2, 768, 11))
    _write_kohya(folder / "sd2-c.safetensors", _vectors(1, 1024, 12))
    _write_sdxl(folder / "xl-d.safetensors", _vectors(1, 768, 13), _vectors(1, 1280, 14))
    (folder / "truncated.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"emb_params\": tr")
    (folder / "garbage.pt").write_bytes(b"this is not a pickle at all")
    (folder / "notes.txt").write_text("ignored: not an embedding file type")
    _write_kohya(folder / "styles" / "sd1-a.safetensors", _vectors(1, 768, 15))  # same name as sd1-a.pt

    catalog = EmbeddingCatalog(folder)

    sd1 = catalog.compatible({"te1": 768})
    assert sorted(sd1) == ["sd1-a", "sd1-b"]
    assert sd1["sd1-a"].path == folder / "sd1-a.pt"  # the shallower file wins the name
    incompatible = catalog.incompatible({"te1": 768})
    assert sorted(incompatible) == ["sd2-c", "xl-d"]
    assert "SD2.x" in incompatible["sd2-c"] and "SD1.x" in incompatible["sd2-c"]
    assert "SDXL" in incompatible["xl-d"]

    assert sorted(catalog.compatible({"te1": 768, "te2": 1280})) == ["xl-d"]
    assert sorted(catalog.compatible({"te1": 1024})) == ["sd2-c"]

    errors = catalog.errors()
    assert sorted(errors) == ["garbage.pt", "styles/sd1-a.safetensors", "truncated.safetensors"]
    assert "truncated" in errors["truncated.safetensors"]
    assert "garbage.pt" in errors["garbage.pt"]
    assert "already used by 'sd1-a.pt'" in errors["styles/sd1-a.safetensors"]


def test_catalog_refresh_sees_new_changed_and_deleted_files(tmp_path):
    catalog = EmbeddingCatalog(tmp_path / "not-created-yet")
    assert catalog.embeddings == {} and catalog.errors() == {}

    catalog = EmbeddingCatalog(tmp_path)
    path = _write_kohya(tmp_path / "style.safetensors", _vectors(1, 768, 20))
    catalog.refresh()
    assert torch.equal(catalog.embeddings["style"].vectors["te1"], _vectors(1, 768, 20))

    _write_kohya(path, _vectors(3, 768, 21))
    catalog.refresh()
    assert catalog.embeddings["style"].vector_count == 3

    path.unlink()
    catalog.refresh()
    assert catalog.embeddings == {}


# --------------------------------------------------------------------------------------------
# Injection
# --------------------------------------------------------------------------------------------


def _tiny_text_config(width: int, hidden_act: str) -> CLIPTextConfig:
    """Real CLIP vocabulary size (so the real tokenizer fits), tiny everything else; the legacy
    eos_token_id=2 of the shipped SD configs."""
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=width,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=40,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )


def _tokenizer(family: str, name: str = "tokenizer") -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(CONFIGS / family / name, local_files_only=True)


@pytest.fixture
def sd1_pipeline() -> SimpleNamespace:
    torch.manual_seed(0)
    encoder = CLIPTextModel(_tiny_text_config(TINY_WIDTH, "quick_gelu")).eval()
    return SimpleNamespace(tokenizer=_tokenizer("sd1"), text_encoder=encoder)


@pytest.fixture
def sdxl_pipeline() -> SimpleNamespace:
    torch.manual_seed(1)
    return SimpleNamespace(
        tokenizer=_tokenizer("sdxl", "tokenizer"),
        tokenizer_2=_tokenizer("sdxl", "tokenizer_2"),
        text_encoder=CLIPTextModel(_tiny_text_config(TINY_WIDTH, "quick_gelu")).eval(),
        text_encoder_2=CLIPTextModelWithProjection(_tiny_text_config(TINY_WIDTH_2, "gelu")).eval(),
    )


def _ids(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def _encode(tokenizer, encoder, prompt: str):
    return encoder(_ids(tokenizer, prompt))


def _snapshot(tokenizer, encoder) -> dict:
    return {
        "weight": encoder.get_input_embeddings().weight.detach().clone(),
        "length": len(tokenizer),
        "vocab": tokenizer.get_vocab(),
        "config_vocab": encoder.config.vocab_size,
    }


def _assert_restored(tokenizer, encoder, before: dict) -> None:
    weight = encoder.get_input_embeddings().weight
    assert weight.shape == before["weight"].shape
    assert torch.equal(weight, before["weight"])  # bitwise, every original row
    assert len(tokenizer) == before["length"]
    assert tokenizer.get_vocab() == before["vocab"]
    assert encoder.config.vocab_size == before["config_vocab"]


def _sd1_embedding(tmp_path: Path, name: str, count: int, seed: int) -> Embedding:
    return read_embedding(_write_a1111_pt(tmp_path / f"{name}.pt", _vectors(count, TINY_WIDTH, seed)))


def test_injected_vectors_change_the_encoding_exactly_like_a_token_with_that_embedding(sd1_pipeline, tmp_path):
    tokenizer, encoder = sd1_pipeline.tokenizer, sd1_pipeline.text_encoder
    style = _sd1_embedding(tmp_path, "MyStyle", count=1, seed=30)
    injector = EmbeddingInjector(sd1_pipeline, "sd1")
    assert injector.encoder_widths == {"te1": TINY_WIDTH}
    prompt = "a photo of MyStyle, detailed"
    without = _encode(tokenizer, encoder, injector.expand_prompt(prompt)).last_hidden_state

    injector.set_active({"MyStyle": style})
    expanded = injector.expand_prompt(prompt)
    assert expanded == "a photo of emb_mystyle_0, detailed"
    with_embedding = _encode(tokenizer, encoder, expanded).last_hidden_state

    # Oracle: an untouched copy of the encoder whose row for "cat" holds the vector must give the same
    # result for "a photo of cat, detailed" (same position, same token embedding).
    injector.clear()
    oracle = CLIPTextModel(encoder.config).eval()
    oracle.load_state_dict(encoder.state_dict())
    cat_id = tokenizer.convert_tokens_to_ids("cat</w>")
    with torch.no_grad():
        oracle.get_input_embeddings().weight[cat_id] = style.vectors["te1"][0]
    expected = _encode(tokenizer, oracle, "a photo of cat, detailed").last_hidden_state
    torch.testing.assert_close(with_embedding, expected, rtol=0, atol=1e-6)

    assert not torch.allclose(with_embedding, without)
    # Causal attention: positions before the embedding (bos, a, photo, of) are unaffected.
    assert torch.equal(with_embedding[:, :4], without[:, :4])


def test_multi_vector_rows_equal_the_file_and_clear_restores_bitwise_over_cycles(sd1_pipeline, tmp_path):
    tokenizer, encoder = sd1_pipeline.tokenizer, sd1_pipeline.text_encoder
    before = _snapshot(tokenizer, encoder)
    baseline = _encode(tokenizer, encoder, "portrait, three-vec and one-vec").last_hidden_state
    three = _sd1_embedding(tmp_path, "three-vec", count=3, seed=31)
    one = _sd1_embedding(tmp_path, "one-vec", count=1, seed=32)
    injector = EmbeddingInjector(sd1_pipeline, "sd1")

    for _ in range(3):
        for active in ({"three-vec": three}, {"three-vec": three, "one-vec": one}, {"one-vec": one}):
            injector.set_active(active)
            table = encoder.get_input_embeddings()
            assert table.num_embeddings == CLIP_VOCAB + sum(e.vector_count for e in active.values())
            assert torch.equal(table.weight[:CLIP_VOCAB], before["weight"])
            for name, embedding in active.items():
                tokens = injector.tokens_for(name)
                assert len(tokens) == embedding.vector_count
                rows = table.weight[tokenizer.convert_tokens_to_ids(tokens)]
                assert torch.equal(rows, embedding.vectors["te1"])
            expanded = injector.expand_prompt("portrait, three-vec and one-vec")
            ids = _ids(tokenizer, expanded)[0].tolist()
            for name in active:
                assert set(tokenizer.convert_tokens_to_ids(injector.tokens_for(name))) <= set(ids)
            assert not torch.equal(_encode(tokenizer, encoder, expanded).last_hidden_state, baseline)
        injector.clear()
        _assert_restored(tokenizer, encoder, before)
        assert torch.equal(_encode(tokenizer, encoder, "portrait, three-vec and one-vec").last_hidden_state, baseline)
        assert injector.expand_prompt("three-vec") == "three-vec"


def test_set_active_with_the_same_embeddings_changes_nothing(sd1_pipeline, tmp_path):
    style = _sd1_embedding(tmp_path, "style", count=2, seed=33)
    injector = EmbeddingInjector(sd1_pipeline, "sd1")
    injector.set_active({"style": style})
    weight = sd1_pipeline.text_encoder.get_input_embeddings().weight
    injector.set_active({"style": read_embedding(style.path)})  # re-read from disk: equal by value
    assert sd1_pipeline.text_encoder.get_input_embeddings().weight is weight
    assert len(sd1_pipeline.tokenizer) == CLIP_VOCAB + 2

    _write_a1111_pt(style.path, _vectors(2, TINY_WIDTH, seed=34))  # the file changed on disk
    injector.set_active({"style": read_embedding(style.path)})
    rows = sd1_pipeline.text_encoder.get_input_embeddings().weight[CLIP_VOCAB:]
    assert torch.equal(rows, _vectors(2, TINY_WIDTH, seed=34))
    assert len(sd1_pipeline.tokenizer) == CLIP_VOCAB + 2


def test_expand_prompt_matches_whole_words_case_insensitively(sd1_pipeline, tmp_path):
    injector = EmbeddingInjector(sd1_pipeline, "sd1")
    injector.set_active(
        {
            "foo": _sd1_embedding(tmp_path, "foo", count=2, seed=35),
            "my style": read_embedding(_write_a1111_pt(tmp_path / "my style.pt", _vectors(1, TINY_WIDTH, 36))),
        }
    )
    expanded = injector.expand_prompt("foobar, FOO, (foo:1.2), foo_x, [my style], my styles")
    assert expanded == (
        "foobar, emb_foo_0 emb_foo_1, (emb_foo_0 emb_foo_1:1.2), foo_x, [emb_my_style_0], my styles"
    )
    assert injector.names_in_prompt("my style and Foo then foo") == ["my style", "foo"]
    assert injector.names_in_prompt("nothing here") == []


def test_incompatible_embedding_is_refused_and_leaves_the_active_set(sd1_pipeline, tmp_path):
    injector = EmbeddingInjector(sd1_pipeline, "sd1")
    good = _sd1_embedding(tmp_path, "good", count=1, seed=37)
    injector.set_active({"good": good})
    wide = read_embedding(_write_kohya(tmp_path / "wide.safetensors", _vectors(1, 768, 38)))
    with pytest.raises(ValueError, match="wide: made for SD1.x"):
        injector.set_active({"good": good, "wide": wide})
    assert injector.active_names == ["good"]
    assert len(sd1_pipeline.tokenizer) == CLIP_VOCAB + 1


def test_sdxl_injects_into_both_encoders_and_restores_both(sdxl_pipeline, tmp_path):
    pipeline = sdxl_pipeline
    before_1 = _snapshot(pipeline.tokenizer, pipeline.text_encoder)
    before_2 = _snapshot(pipeline.tokenizer_2, pipeline.text_encoder_2)
    clip_l, clip_g = _vectors(2, TINY_WIDTH, 40), _vectors(2, TINY_WIDTH_2, 41)
    embedding = read_embedding(_write_sdxl(tmp_path / "xl.safetensors", clip_l, clip_g))
    injector = EmbeddingInjector(pipeline, "sdxl")
    assert injector.encoder_widths == {"te1": TINY_WIDTH, "te2": TINY_WIDTH_2}
    baseline_2 = _encode(pipeline.tokenizer_2, pipeline.text_encoder_2, "a xl photo")

    sd1_only = _sd1_embedding(tmp_path, "sd1-only", count=1, seed=42)
    with pytest.raises(ValueError, match="needs SD|te2"):
        injector.set_active({"sd1-only": sd1_only})

    for _ in range(2):
        injector.set_active({"xl": embedding})
        tokens = injector.tokens_for("xl")
        for tokenizer, encoder, vectors in (
            (pipeline.tokenizer, pipeline.text_encoder, clip_l),
            (pipeline.tokenizer_2, pipeline.text_encoder_2, clip_g),
        ):
            rows = encoder.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids(tokens)]
            assert torch.equal(rows, vectors)

        prompt = injector.expand_prompt("a xl photo")
        ids = _ids(pipeline.tokenizer_2, prompt)
        output = _encode(pipeline.tokenizer_2, pipeline.text_encoder_2, prompt)
        assert not torch.allclose(output.text_embeds, baseline_2.text_embeds)
        # The pooled output must come from the EOS position even though the added ids exceed the EOS id.
        eos_position = (ids[0] == pipeline.tokenizer_2.eos_token_id).nonzero()[0].item()
        pooled = output.last_hidden_state[0, eos_position]
        expected = pipeline.text_encoder_2.text_projection(pooled)
        torch.testing.assert_close(output.text_embeds[0], expected, rtol=0, atol=1e-6)

        injector.clear()
        _assert_restored(pipeline.tokenizer, pipeline.text_encoder, before_1)
        _assert_restored(pipeline.tokenizer_2, pipeline.text_encoder_2, before_2)
        assert pipeline.text_encoder_2.text_model.eos_token_id == 2
        after = _encode(pipeline.tokenizer_2, pipeline.text_encoder_2, "a xl photo")
        assert torch.equal(after.text_embeds, baseline_2.text_embeds)
