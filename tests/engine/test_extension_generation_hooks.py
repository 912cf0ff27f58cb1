"""Every generation-time hook of the extension API, on the default model, with the test pack
(tests/extension_pack/) loaded through the app's real discovery from `<data>/extensions/`.

Each hook's effect is checked where a user sees it: in the image, its infotext, a file the extension
writes, or the job's warnings. The pack's hooks act only on prompts carrying their trigger word."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import with_default_model
from webui.context import build_context
from webui.extensions.registry import FAILED, LOADED
from webui.generation.infotext import parse_infotext
from webui.generation.requests import Img2ImgRequest, RequestError, Txt2ImgRequest
from webui.settings import settings_from_args
from webui.xyz.plot import AxisSpec
from webui.xyz.service import XyzOptions

PACK = Path(__file__).resolve().parents[1] / "extension_pack"
SMALL = dict(width=64, height=64, steps=4, seed=11, sampler_name="Euler", save_grid=False)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, default_model_folder):
    data = with_default_model(tmp_path_factory.mktemp("pack"), default_model_folder)
    shutil.copytree(PACK, data / "extensions", ignore=shutil.ignore_patterns("README.md", "__pycache__"))
    context = build_context(settings_from_args(["--data-dir", str(data)]))
    yield context
    context.close()


def generate(ctx, **fields):
    return ctx.generation.submit_txt2img(Txt2ImgRequest(**{**SMALL, **fields})).result(timeout=300)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def events(ctx) -> list[dict]:
    path = ctx.settings.data_dir / "extension-data" / "pack-prompts" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_pack_loads_through_discovery(ctx):
    states = {name: record.state for name, record in ctx.extensions.records.items()}
    for name in ("pack-prompts", "pack-images", "pack-denoising", "pack-tables"):
        assert states[name] == LOADED, ctx.extensions.records[name].problem


def test_prompt_expansion_draws_one_image_per_prompt_with_consecutive_seeds(ctx):
    result = generate(ctx, prompt="a PACKCOLORS circle", batch_size=2, batch_count=1)
    assert len(result.images) == 3  # the expansion changed the count (2 asked for)
    assert result.seeds == [11, 12, 13]
    prompts = [parse_infotext(text)["Prompt"] for text in result.infotexts]
    assert prompts == ["a red circle", "a green circle", "a blue circle"]
    info = result.info(Txt2ImgRequest(**{**SMALL, "prompt": "a PACKCOLORS circle", "batch_size": 2}))
    assert info["all_prompts"] == prompts and info["prompt"] == "a PACKCOLORS circle"
    # Image 1 is the same as "a green circle" drawn alone with seed 12: its own prompt and seed.
    alone = generate(ctx, prompt="a green circle", seed=12)
    assert np.abs(pixels(alone.images[0]) - pixels(result.images[1])).max() <= 1


def test_expanded_prompts_carry_the_style_once(ctx):
    (ctx.settings.data_dir / "styles.csv").write_text('name,prompt,negative_prompt\nvivid,"{prompt}, vivid colors",dull\n')
    result = generate(ctx, prompt="a PACKCOLORS circle", styles=("vivid",))
    fields = [parse_infotext(text) for text in result.infotexts]
    assert [f["Prompt"] for f in fields] == [f"a {c} circle, vivid colors" for c in ("red", "green", "blue")]
    assert all(f["Negative prompt"] == "dull" for f in fields)
    plain = parse_infotext(generate(ctx, prompt="a circle", styles=("vivid",)).infotexts[0])
    assert plain["Prompt"] == "a circle, vivid colors"


def test_after_batch_hook_sees_each_batch(ctx):
    generate(ctx, prompt="PACKCOLORS square", batch_size=2)
    batches = [event for event in events(ctx) if event["event"] == "batch"][-2:]
    assert [batch["seeds"] for batch in batches] == [[11, 12], [13]]
    assert batches[0]["prompts"] == ["red square", "green square"] and batches[1]["images"] == 1


def test_model_loaded_hook_names_the_checkpoint(ctx):
    generate(ctx, prompt="anything")
    loaded = [event for event in events(ctx) if event["event"] == "model"]
    assert loaded and loaded[0]["name"] == "sd-studio-toy" and loaded[0]["family"] in ("sd1", "sd15", "sd")
    assert loaded[0]["hash"] and len(loaded[0]["hash"]) == 10


def test_before_request_hook_changes_the_request(ctx):
    result = generate(ctx, prompt="PACKSTEPS2 circle", steps=6)
    assert parse_infotext(result.infotexts[0])["Steps"] == "2"


def test_a_request_change_the_app_refuses_is_dropped_with_a_warning(ctx):
    result = generate(ctx, prompt="PACKBADSTEPS circle", steps=3)
    assert parse_infotext(result.infotexts[0])["Steps"] == "3"
    assert any("'pack-prompts'" in w and "change to the request was not used" in w and "steps 100000" in w
               for w in result.warnings)
    assert ctx.extensions.records["pack-prompts"].state == LOADED


def test_after_image_hook_replaces_the_saved_image_and_adds_an_infotext_field(ctx):
    result = generate(ctx, prompt="PACKREPLACE circle")
    assert result.images[0].getpixel((5, 5)) == (255, 0, 255)
    saved = Image.open(result.saved_paths[0])
    assert saved.convert("RGB").getpixel((30, 30)) == (255, 0, 255)
    assert parse_infotext(result.infotexts[0])["Pack replaced"] == "magenta"


def test_after_image_hook_runs_an_inpaint_pass_through_the_same_model(ctx):
    detailed = generate(ctx, prompt="a red circle on a blue background PACKDETAIL")
    first_pass = pixels(Image.open(ctx.settings.data_dir / "extension-data" / "pack-images" / "before-detail.png"))
    after = pixels(detailed.images[0])
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 16:48] = True
    assert np.array_equal(after[~mask], first_pass[~mask])  # outside the mask: the first pass, bit for bit
    assert np.abs(after[mask] - first_pass[mask]).mean() > 5  # inside: redrawn by the inpaint pass
    assert pixels(Image.open(detailed.saved_paths[0])).tolist() == after.tolist()  # the saved file is detailed
    assert parse_infotext(detailed.infotexts[0])["Pack detailer"] == "center"


def test_step_hook_that_zeroes_the_latents_decides_the_image(ctx):
    normal = pixels(generate(ctx, prompt="a red circle on a blue background").images[0])
    flat = pixels(generate(ctx, prompt="a red circle on a blue background PACKFLAT").images[0])
    other = pixels(generate(ctx, prompt="two green squares PACKFLAT", seed=99).images[0])
    # After the last step the latents are all zero: the image no longer depends on the prompt or the seed.
    assert np.array_equal(flat, other)
    assert np.abs(flat - normal).mean() > 10
    # What a zero latent decodes to is uniform across the picture, unlike a drawn scene.
    assert np.abs(np.diff(flat, axis=1)).mean() < np.abs(np.diff(normal, axis=1)).mean()


def test_step_hooks_reach_the_hires_pass(ctx):
    hires = dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.5)
    flat = generate(ctx, prompt="a red circle PACKFLAT", **hires)
    other = generate(ctx, prompt="two blue squares PACKFLAT", seed=5, **hires)
    # The step count runs on through the second pass: its last step is the job's last, zeroed there.
    assert flat.images[0].size == (128, 128)
    assert np.array_equal(pixels(flat.images[0]), pixels(other.images[0]))


def test_unet_residuals_change_the_image(ctx):
    normal = pixels(generate(ctx, prompt="a red circle PACKNONE").images[0])
    with_residuals = pixels(generate(ctx, prompt="a red circle PACKRESIDUAL").images[0])
    again = pixels(generate(ctx, prompt="a red circle PACKNONE").images[0])
    assert np.array_equal(normal, again)
    assert np.abs(with_residuals - normal).mean() > 5


def test_a_tiled_model_call_still_draws_an_image(ctx):
    whole = pixels(generate(ctx, prompt="a red circle PACKWHOLE").images[0])
    tiled = pixels(generate(ctx, prompt="a red circle PACKTILED").images[0])
    assert tiled.std() > 10 and not np.array_equal(whole, tiled)


def test_attention_processors_are_installed_for_the_job_and_restored(ctx):
    first = pixels(generate(ctx, prompt="a red circle XATTN").images[0])
    dropped = pixels(generate(ctx, prompt="a red circle PACKATTN").images[0])
    after = pixels(generate(ctx, prompt="a red circle XATTN").images[0])
    assert np.abs(dropped - first).mean() > 5
    assert np.array_equal(first, after)  # the original processors are back
    with ctx.manager.checkout() as model:
        assert not any(type(p).__name__ == "DropPrompt" for p in model.pipeline.unet.attn_processors.values())


def test_vae_decode_wrapper_changes_the_pixels(ctx):
    # PACKFLAT makes the final latents all zero whatever the prompt, so both images decode the same latents;
    # the decode wrapper of the second negates the decoder's output: its pixels are the first's negative.
    plain = pixels(generate(ctx, prompt="a red circle PACKFLAT").images[0])
    inverted = pixels(generate(ctx, prompt="a red circle PACKFLAT PACKINVERT").images[0])
    assert np.abs((255 - inverted) - plain).max() <= 1
    assert np.abs(inverted - plain).mean() > 20


def test_vae_encode_wrapper_reaches_img2img(ctx):
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    base = dict(width=64, height=64, steps=4, seed=3, sampler_name="Euler", denoising_strength=0.3, save_grid=False)
    normal = ctx.generation.submit_img2img(Img2ImgRequest(prompt="red PACKPLAIN", init_images=(source,), **base))
    zeroed = ctx.generation.submit_img2img(Img2ImgRequest(prompt="red PACKENCODE", init_images=(source,), **base))
    normal_pixels, zeroed_pixels = pixels(normal.result(300).images[0]), pixels(zeroed.result(300).images[0])
    assert normal_pixels[..., 0].mean() > 120  # low denoising keeps the red source
    assert np.abs(zeroed_pixels - normal_pixels).mean() > 30  # from the zero latent, not the source


def test_an_added_sampler_is_listed_and_usable(ctx):
    assert "Pack Euler" in ctx.generation.sampler_names()
    assert ctx.generation.schedule_types_for("Pack Euler") == ["Automatic"]
    added = generate(ctx, prompt="a red circle", sampler_name="Pack Euler")
    builtin = generate(ctx, prompt="a red circle", sampler_name="Euler")
    assert parse_infotext(added.infotexts[0])["Sampler"] == "Pack Euler"
    # The pack's sampler is diffusers' Euler on the model's own config: nearly the built-in Euler's image
    # (which spaces its timesteps as A1111 does), far from another sampler's.
    other = generate(ctx, prompt="a red circle", sampler_name="DDIM")
    close = np.abs(pixels(added.images[0]) - pixels(builtin.images[0])).mean()
    assert close < 2 and close < np.abs(pixels(other.images[0]) - pixels(builtin.images[0])).mean()
    with pytest.raises(RequestError, match="takes no schedule type"):
        generate(ctx, prompt="x", sampler_name="Pack Euler", scheduler="Karras")


def test_an_added_xyz_axis_is_offered_and_changes_each_cell(ctx):
    assert "Pack CFG" in ctx.xyz.registry.labels()
    job = ctx.xyz.submit(Txt2ImgRequest(**{**SMALL, "prompt": "a red circle"}),
                         AxisSpec("Pack CFG", "1, 9"), None, None, XyzOptions(include_sub_images=True))
    plot = job.result(timeout=300)
    scales = [parse_infotext(text)["CFG scale"] for text in plot.infotexts[1:]]  # the grid's comes first
    assert scales == ["1.0", "9.0"]
    assert "Pack CFG" in plot.infotext  # the grid's infotext names the axis


def test_a_hook_that_raises_is_switched_off_and_the_job_says_so(ctx):
    result = generate(ctx, prompt="a red circle PACKCRASH")
    assert len(result.images) == 1 and result.saved_paths[0].is_file()
    assert any("pack-broken" in warning and "RuntimeError" in warning for warning in result.warnings)
    record = ctx.extensions.records["pack-broken"]
    assert record.state == FAILED and "crashed on purpose" in record.problem and record.traceback
    assert not any("pack-broken" in w for w in generate(ctx, prompt="a red circle PACKCRASH").warnings)


def test_a_hook_returning_the_wrong_type_is_refused_with_a_clear_message(ctx):
    result = generate(ctx, prompt="a red circle PACKWRONG", steps=3)
    assert parse_infotext(result.infotexts[0])["Steps"] == "3"  # the request ran unchanged
    record = ctx.extensions.records["pack-wrongtype"]
    assert record.state == FAILED
    assert record.problem == "before_request returned str, expected Txt2ImgRequest or None"
    assert any("pack-wrongtype" in warning for warning in result.warnings)


def test_an_extension_network_type_sees_its_tags_and_lists_its_cards(ctx):
    """`<packstyle:crimson:1>` reaches the network type's activate hook, which adds its words; the tag never
    reaches the text encoder; its cards are listed for the Extra networks panel."""
    from webui.extensions.generation_hooks import network_items, network_types

    tagged = generate(ctx, prompt="a circle <packstyle:crimson:1>", negative_prompt="<packstyle:navy:1>")
    fields = parse_infotext(tagged.infotexts[0])
    assert fields["Prompt"] == "a circle <packstyle:crimson:1>, red background"
    assert fields["Negative prompt"] == "<packstyle:navy:1>, blue background"
    # The tags themselves draw nothing: the same prompts with the tags cut out (as the encoder gets them).
    plain = generate(ctx, prompt="a circle , red background", negative_prompt=", blue background")
    assert np.abs(pixels(plain.images[0]) - pixels(tagged.images[0])).max() <= 1
    untouched = generate(ctx, prompt="a circle")
    assert parse_infotext(untouched.infotexts[0])["Prompt"] == "a circle"
    labels = dict(network_types(ctx.extensions))
    assert labels["packstyle"] == "Pack styles"
    assert [item.name for item in network_items(ctx.extensions, "packstyle")] == ["crimson", "navy"]


def test_the_extra_networks_panel_has_a_tab_for_an_extension_network_type(ctx):
    import gradio as gr

    from webui.ui.extra_networks import build_extra_networks, extension_network_cards

    cards = extension_network_cards(ctx, "packstyle", "navy")
    assert [(card.name, card.caption) for card in cards] == [("navy", "navy · adds 'blue background'")]
    with gr.Blocks() as blocks:
        build_extra_networks(ctx, gr.Textbox(), None, prefix="t")
    ids = {block.elem_id for block in blocks.blocks.values()}
    assert {"t_extra_networks_tab_packstyle", "t_extra_networks_packstyle"} <= ids
