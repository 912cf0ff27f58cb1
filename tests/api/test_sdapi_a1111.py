"""A1111 API gaps (issue 15, item 6) against one real `launch.py --api` server, as A1111 clients use them:
per-request overrides and their restore, the full `info` JSON, embeddings/memory/scripts/extras routes,
interrupt/skip/progress semantics, the X/Y/Z script through `script_args`, and the `webuiapi` client."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time

import pytest
import requests
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import start_server, stop_server, with_default_model
from webui.generation.infotext import parse_infotext, read_infotext

SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}
COPY = "toy-copy"
VAE_FILE = "toy-vae.safetensors"


@pytest.fixture(scope="module")
def a1111(tmp_path_factory, default_model_folder):
    """A server with a second checkpoint (a copy of the default one), a VAE file and two embeddings: one
    that fits the default model's 64-wide text encoder and one made for a 768-wide one."""
    data = with_default_model(tmp_path_factory.mktemp("a1111"), default_model_folder)
    shutil.copytree(default_model_folder, data / "models" / "Stable-diffusion" / COPY)
    (data / "models" / "VAE").mkdir(parents=True)
    shutil.copy(default_model_folder / "vae" / "diffusion_pytorch_model.safetensors", data / "models" / "VAE" / VAE_FILE)
    (data / "models" / "embeddings").mkdir(parents=True)
    save_file({"emb_params": torch.randn(2, 64)}, str(data / "models" / "embeddings" / "fits.safetensors"))
    save_file({"emb_params": torch.randn(3, 768)}, str(data / "models" / "embeddings" / "too-wide.safetensors"))
    server = start_server(data, "--api")
    yield server
    stop_server(server)


def api(server, route: str) -> str:
    return f"{server.url}/sdapi/v1/{route}"


def post(server, route: str, body: dict) -> requests.Response:
    return requests.post(api(server, route), json=body, timeout=300)


def get(server, route: str, **params) -> requests.Response:
    return requests.get(api(server, route), params=params, timeout=60)


def txt2img(server, **fields) -> dict:
    response = post(server, "txt2img", {**SMALL, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    body["info"] = json.loads(body["info"])
    return body


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def encode(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def current_checkpoint(server) -> str:
    return get(server, "options").json()["sd_model_checkpoint"]


# ---- 1. override_settings and override_settings_restore_afterwards --------------------------------

def test_checkpoint_override_is_restored_afterwards_unless_asked_to_keep_it(a1111):
    loaded = current_checkpoint(a1111)
    assert loaded.startswith("sd-studio-toy [")
    first = txt2img(a1111, prompt="override", seed=1, override_settings={"sd_model_checkpoint": COPY})
    assert first["info"]["sd_model_name"] == COPY
    assert parse_infotext(read_infotext(decode(first["images"][0])))["Model"] == COPY
    assert current_checkpoint(a1111) == loaded  # A1111's default: restored afterwards
    assert txt2img(a1111, prompt="after", seed=1)["info"]["sd_model_name"] == "sd-studio-toy"

    kept = txt2img(a1111, prompt="keep", seed=1, override_settings={"sd_model_checkpoint": COPY},
                   override_settings_restore_afterwards=False)
    assert kept["info"]["sd_model_name"] == COPY
    assert current_checkpoint(a1111).startswith(f"{COPY} [")
    assert txt2img(a1111, prompt="next", seed=1)["info"]["sd_model_name"] == COPY
    assert post(a1111, "options", {"sd_model_checkpoint": loaded}).status_code == 200
    assert current_checkpoint(a1111) == loaded


def test_clip_skip_vae_and_samples_save_overrides_apply_once_or_stay(a1111):
    once = txt2img(a1111, prompt="clip", seed=2,
                   override_settings={"CLIP_stop_at_last_layers": 2, "sd_vae": VAE_FILE})
    assert once["info"]["clip_skip"] == 2 and once["info"]["sd_vae_name"] == VAE_FILE
    assert len(once["info"]["sd_vae_hash"]) == 10
    params = parse_infotext(read_infotext(decode(once["images"][0])))
    assert params["Clip skip"] == "2" and params["VAE"] == VAE_FILE
    plain = txt2img(a1111, prompt="clip", seed=2)
    assert plain["info"]["clip_skip"] == 1 and plain["info"]["sd_vae_name"] is None
    assert get(a1111, "options").json()["CLIP_stop_at_last_layers"] == 1

    txt2img(a1111, prompt="clip", seed=2, override_settings={"CLIP_stop_at_last_layers": 2, "sd_vae": VAE_FILE},
            override_settings_restore_afterwards=False)
    later = txt2img(a1111, prompt="clip", seed=2)
    assert later["info"]["clip_skip"] == 2 and later["info"]["sd_vae_name"] == VAE_FILE
    options = get(a1111, "options").json()
    assert options["CLIP_stop_at_last_layers"] == 2 and options["sd_vae"] == VAE_FILE
    assert post(a1111, "options", {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"}).status_code == 200
    assert txt2img(a1111, prompt="clip", seed=2)["info"]["clip_skip"] == 1

    saved = txt2img(a1111, prompt="save me", seed=3, save_images=True)["info"]["saved_paths"]
    assert len(saved) == 1
    not_saved = txt2img(a1111, prompt="do not save", seed=3, save_images=True,
                        override_settings={"samples_save": False})["info"]["saved_paths"]
    assert not_saved == []
    txt2img(a1111, prompt="off", seed=3, save_images=True, override_settings={"samples_save": False},
            override_settings_restore_afterwards=False)
    assert get(a1111, "options").json()["samples_save"] is False
    assert txt2img(a1111, prompt="still off", seed=3, save_images=True)["info"]["saved_paths"] == []
    post(a1111, "options", {"samples_save": True})
    assert len(txt2img(a1111, prompt="on again", seed=3, save_images=True)["info"]["saved_paths"]) == 1
    assert len([p for p in (a1111.data_dir / "outputs").rglob("*.png") if "txt2img-images" in str(p)]) == 2


@pytest.mark.parametrize("overrides,status,reason", [
    ({"sd_vae": "no-such-vae.safetensors"}, 422, "no-such-vae"),
    ({"CLIP_stop_at_last_layers": 13}, 422, "clip_skip 13"),
])
def test_bad_overrides_get_a_reason_and_change_nothing(a1111, overrides, status, reason):
    before = get(a1111, "options").json()
    response = post(a1111, "txt2img", {**SMALL, "override_settings": overrides,
                                       "override_settings_restore_afterwards": False})
    assert response.status_code == status and reason in response.json()["detail"], response.text
    assert post(a1111, "options", overrides).status_code == 422
    assert get(a1111, "options").json() == before


# ---- 2. the info JSON ---------------------------------------------------------------------------

A1111_INFO_FIELDS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
    "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
    "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash",
    "seed_resize_from_w", "seed_resize_from_h", "denoising_strength", "extra_generation_params",
    "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip",
    "is_using_inpainting_conditioning", "version",
}


def test_info_carries_every_a1111_field_with_the_values_used(a1111):
    models = {m["model_name"]: m for m in get(a1111, "sd-models").json()}
    started = time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() - 2))
    body = txt2img(a1111, prompt="a red circle", negative_prompt="blur",
                   seed=40, subseed=7, subseed_strength=0.25, batch_size=2, cfg_scale=6.5, enable_hr=True,
                   hr_scale=2, hr_second_pass_steps=1, denoising_strength=0.4)
    info = body["info"]
    assert A1111_INFO_FIELDS <= set(info), A1111_INFO_FIELDS - set(info)
    assert info["prompt"] == "a red circle" and info["all_prompts"] == ["a red circle"] * 2
    assert info["negative_prompt"] == "blur" and info["all_negative_prompts"] == ["blur"] * 2
    assert (info["seed"], info["all_seeds"], info["subseed"], info["all_subseeds"]) == (40, [40, 41], 7, [7, 8])
    assert info["subseed_strength"] == 0.25 and info["cfg_scale"] == 6.5 and info["steps"] == 2
    assert (info["width"], info["height"], info["batch_size"], info["sampler_name"]) == (64, 64, 2, "Euler")
    assert info["sd_model_name"] == "sd-studio-toy" and info["sd_model_hash"] == models["sd-studio-toy"]["hash"]
    assert info["sd_vae_name"] is None and info["sd_vae_hash"] is None
    assert info["restore_faces"] is False and info["face_restoration_model"] is None
    assert info["denoising_strength"] == 0.4 and info["clip_skip"] == 1 and info["styles"] == []
    assert info["extra_generation_params"]["Hires upscale"] == 2
    assert info["extra_generation_params"]["Hires steps"] == 1
    assert "Seed" not in info["extra_generation_params"]
    assert info["is_using_inpainting_conditioning"] is False and info["version"].startswith("SD Studio")
    assert started <= info["job_timestamp"] <= time.strftime("%Y%m%d%H%M%S") and len(info["job_timestamp"]) == 14
    # The grid comes first: infotexts line up with the images, index_of_first_image says where they start.
    assert len(body["images"]) == 3 and info["index_of_first_image"] == 1 and len(info["infotexts"]) == 3
    for image, text in zip(body["images"][1:], info["infotexts"][1:]):
        assert read_infotext(decode(image)) == text
    assert parse_infotext(info["infotexts"][2])["Seed"] == "41"

    single = txt2img(a1111, prompt="one", seed=5)["info"]
    assert single["index_of_first_image"] == 0 and single["denoising_strength"] is None
    assert single["extra_generation_params"] == {}


def test_img2img_info_has_the_denoising_strength_and_its_extras(a1111):
    response = post(a1111, "img2img", {**SMALL, "prompt": "x", "seed": 4, "denoising_strength": 0.5,
                                        "init_images": [encode(Image.new("RGB", (64, 64), (200, 30, 30)))],
                                        "mask": encode(Image.new("L", (64, 64), 255)), "mask_blur": 2})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert A1111_INFO_FIELDS <= set(info)
    assert info["denoising_strength"] == 0.5 and info["extra_generation_params"]["Mask blur"] == 2


# ---- 3. embeddings, memory, scripts, extras -----------------------------------------------------

def test_embeddings_memory_scripts_and_script_info(a1111):
    embeddings = get(a1111, "embeddings").json()
    assert embeddings["loaded"] == {"fits": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                             "shape": 64, "vectors": 2}}
    assert embeddings["skipped"]["too-wide"]["shape"] == 768 and embeddings["skipped"]["too-wide"]["vectors"] == 3

    memory = get(a1111, "memory").json()
    ram = memory["ram"]
    assert 100 * 2**20 < ram["used"] < ram["total"] and ram["free"] == ram["total"] - ram["used"]
    assert memory["cuda"] == {"error": "unavailable"}  # CPU server, as A1111 reports it

    # X/Y/Z first, then the shipped extension scripts (extensions-builtin/prompt-matrix)
    assert get(a1111, "scripts").json() == {"txt2img": ["x/y/z plot", "prompt matrix"],
                                            "img2img": ["x/y/z plot", "prompt matrix"]}
    infos = get(a1111, "script-info").json()
    txt2img_info = next(i for i in infos if i["name"] == "x/y/z plot" and not i["is_img2img"])
    labels = [arg["label"] for arg in txt2img_info["args"]]
    assert labels[:3] == ["X type", "X values", "X values"] and labels[9] == "Draw legend" and len(labels) == 16
    assert txt2img_info["args"][0]["choices"][11] == "Checkpoint name" and txt2img_info["args"][0]["value"] == 1
    img2img_info = next(i for i in infos if i["is_img2img"])
    assert img2img_info["args"][0]["choices"][10] == "Checkpoint name"


def test_extras_resize_by_factor_and_to_a_size_with_lanczos_and_nearest(a1111):
    source = Image.new("RGB", (40, 20), (0, 0, 0))
    source.paste((255, 255, 255), (0, 0, 20, 20))
    single = post(a1111, "extra-single-image", {"image": encode(source), "upscaling_resize": 3, "upscaler_1": "Nearest"})
    assert single.status_code == 200, single.text
    image = decode(single.json()["image"]).convert("RGB")
    assert image.size == (120, 60) and image.tobytes() == source.resize((120, 60), Image.NEAREST).tobytes()
    assert "Nearest" in single.json()["html_info"]

    cropped = post(a1111, "extra-single-image", {"image": encode(source), "resize_mode": 1, "upscaler_1": "Lanczos",
                                                 "upscaling_resize_w": 50, "upscaling_resize_h": 50,
                                                 "upscaling_crop": True})
    assert decode(cropped.json()["image"]).size == (50, 50)
    uncropped = post(a1111, "extra-single-image", {"image": encode(source), "resize_mode": 1, "upscaler_1": "Lanczos",
                                                   "upscaling_resize_w": 50, "upscaling_resize_h": 50,
                                                   "upscaling_crop": False})
    assert decode(uncropped.json()["image"]).size == (100, 50)  # covers 50x50, keeps the aspect ratio
    unchanged = post(a1111, "extra-single-image", {"image": encode(source), "upscaler_1": "None"})
    assert decode(unchanged.json()["image"]).convert("RGB").tobytes() == source.tobytes()

    batch = post(a1111, "extra-batch-images", {"upscaling_resize": 2, "upscaler_1": "Lanczos",
                                               "imageList": [{"data": encode(source), "name": "a"},
                                                             {"data": encode(Image.new("RGB", (8, 8))), "name": "b"}]})
    assert batch.status_code == 200, batch.text
    assert [decode(item).size for item in batch.json()["images"]] == [(80, 40), (16, 16)]


@pytest.mark.parametrize("body,status,reason", [
    ({"upscaler_1": "ESRGAN_4x"}, 422, "None, Lanczos, Nearest"),
    ({"upscaler_1": "Lanczos", "upscaler_2": "SwinIR"}, 422, "SwinIR"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 0}, 422, "upscaling_resize"),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 8, "image": "BIG"}, 413, "pixels"),
    ({"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 20000, "upscaling_resize_h": 20000}, 413, "limit"),
    ({"gfpgan_visibility": 1}, 422, "face restoration"),
    ({"image": "bm90IGFuIGltYWdl"}, 422, "not an image"),
    ({"upscaling_resize": float("nan")}, 422, "upscaling_resize"),
])
def test_bad_extras_input_gets_a_reason(a1111, body, status, reason):
    image = encode(Image.new("RGB", (16, 16)))
    if body.get("image") == "BIG":
        body = {**body, "image": encode(Image.new("RGB", (2048, 2048)))}  # 8x = 16384 px a side
    payload = json.dumps({"image": image, **body}, allow_nan=True)
    response = requests.post(api(a1111, "extra-single-image"), data=payload,
                             headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == status and reason in response.json()["detail"], response.text
    assert get(a1111, "memory").status_code == 200


# ---- interrupt, skip and progress ---------------------------------------------------------------

def start_long_request(server, steps: int, **fields) -> tuple[threading.Thread, dict]:
    results: dict = {}

    def run() -> None:
        results["response"] = post(server, "txt2img", {**SMALL, "steps": steps, **fields})

    thread = threading.Thread(target=run)
    thread.start()
    return thread, results


def wait_for_progress(server, condition, seen: list | None = None, **params) -> dict:
    """Poll /progress until `condition` holds; every answer is appended to `seen`."""
    for _ in range(2400):
        progress = get(server, "progress", **params).json()
        if seen is not None:
            seen.append(progress)
        if condition(progress):
            return progress
        time.sleep(0.05)
    raise AssertionError(f"progress never reached the condition: {progress}")


def test_progress_shows_the_preview_and_skip_ends_only_the_current_image(a1111):
    thread, results = start_long_request(a1111, 40, prompt="skip me", seed=60, n_iter=2)
    progress = wait_for_progress(a1111, lambda p: p["current_image"] is not None)
    assert decode(progress["current_image"]).format == "PNG"
    without = get(a1111, "progress", skip_current_image="true").json()
    assert without["state"]["busy"] and without["current_image"] is None
    skipped_at = get(a1111, "progress").json()["state"]
    assert post(a1111, "skip", {}).json()["skipped"] is True
    seen: list = []
    wait_for_progress(a1111, lambda p: p["state"].get("job_no") == 1 or not p["state"]["busy"], seen)
    if skipped_at["job_no"] == 0:  # the first image stopped within a step or two of the skip
        assert max(p["state"].get("sampling_step", 0) for p in seen if p["state"].get("job_no") == 0) <= \
            skipped_at["sampling_step"] + 3
    thread.join(600)
    body = results["response"].json()
    info = json.loads(body["info"])
    # The skipped image is returned as far as it got, and the second image is made as usual.
    assert info["interrupted"] is False and info["all_seeds"] == [60, 61] and len(body["images"]) == 3
    assert [parse_infotext(text)["Seed"] for text in info["infotexts"][1:]] == ["60", "61"]


def test_interrupt_returns_the_image_made_so_far_and_the_next_request_runs_normally(a1111):
    thread, results = start_long_request(a1111, 40, prompt="stop me", seed=70, n_iter=3)
    wait_for_progress(a1111, lambda p: p["state"].get("sampling_step", 0) >= 2)
    assert post(a1111, "interrupt", {}).json()["interrupted"] is True
    thread.join(600)
    body = results["response"].json()
    info = json.loads(body["info"])
    # A1111 answers with the images made so far (the interrupted one partly denoised), none after it.
    made = len(info["all_seeds"])
    assert info["interrupted"] is True and 1 <= made < 3 and info["all_seeds"] == list(range(70, 70 + made))
    assert len(body["images"]) == made + (made > 1)  # a grid first when there are several
    assert decode(body["images"][-1]).size == (64, 64)
    assert txt2img(a1111, prompt="fine", seed=1)["info"]["interrupted"] is False


# ---- 4. scripts in generation bodies -------------------------------------------------------------

def xyz_args(x_type, x_values="", x_list=None, y_type=0, y_values="", **options) -> list:
    """A1111 v1.10's positional X/Y/Z arguments."""
    return [x_type, x_values, x_list or [], y_type, y_values, [], 0, "", [],
            options.get("draw_legend", True), options.get("include_lone_images", False), False, False,
            0, options.get("csv_mode", False), False]


def test_xyz_script_by_a1111_axis_indices(a1111):
    body = txt2img(a1111, prompt="a red circle", seed=9, script_name="x/y/z plot",
                   script_args=xyz_args(4, "1, 2", include_lone_images=True))
    info = body["info"]
    assert len(body["images"]) == 3 and info["index_of_first_image"] == 1  # grid, then the two cells
    grid = decode(body["images"][0])
    assert grid.width >= 128 and grid.height >= 64
    grid_params = parse_infotext(read_infotext(grid))
    assert grid_params["X Type"] == "Steps" and grid_params["X Values"] == "1, 2"
    assert [parse_infotext(t)["Steps"] for t in info["infotexts"][1:]] == ["1", "2"]
    assert info["all_seeds"] == [9, 9]

    samplers = txt2img(a1111, prompt="a red circle", seed=9, script_name="X/Y/Z plot",
                       script_args=xyz_args(9, "", ["Euler", "Euler a"], y_type=11, y_values=COPY, csv_mode=False))
    params = parse_infotext(read_infotext(decode(samplers["images"][0])))
    assert params["X Type"] == "Sampler" and params["X Values"] == "Euler, Euler a"
    assert params["Y Type"] == "Checkpoint name" and current_checkpoint(a1111).startswith("sd-studio-toy [")

    kept = txt2img(a1111, prompt="a red circle", seed=9, script_name="x/y/z plot", script_args=xyz_args(4, "1, 2"),
                   override_settings={"sd_model_checkpoint": COPY}, override_settings_restore_afterwards=False)
    assert parse_infotext(kept["info"]["infotexts"][0])["Model"] == COPY
    assert current_checkpoint(a1111).startswith(f"{COPY} [")
    assert post(a1111, "options", {"sd_model_checkpoint": "sd-studio-toy"}).status_code == 200


def test_xyz_script_on_img2img_uses_the_img2img_axis_list(a1111):
    source = encode(Image.new("RGB", (64, 64), (20, 160, 40)))
    response = post(a1111, "img2img", {**SMALL, "prompt": "a green square", "seed": 5, "init_images": [source],
                                        "denoising_strength": 0.6, "script_name": "x/y/z plot",
                                        "script_args": xyz_args(22, "0.3, 0.9", include_lone_images=True)})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert parse_infotext(info["infotexts"][0])["X Type"] == "Denoising"  # index 22 on img2img, 23 on txt2img
    assert [parse_infotext(text)["Denoising strength"] for text in info["infotexts"][1:]] == ["0.3", "0.9"]


@pytest.mark.parametrize("fields,reason", [
    ({"script_name": "x/y/z plot", "script_args": xyz_args(12, "1, 2")}, "Negative Guidance minimum sigma"),
    ({"script_name": "x/y/z plot", "script_args": xyz_args(99, "1")}, "0..37"),
    ({"script_name": "x/y/z plot", "script_args": xyz_args("Eta", "1")}, "'Eta'"),
    ({"script_name": "x/y/z plot", "script_args": xyz_args(4, "one, two")}, "one"),
    ({"script_name": "outpainting mk2"}, "x/y/z plot"),
    ({"alwayson_scripts": {"ADetailer": {"args": []}}}, "'ADetailer'"),  # not installed here
    ({"alwayson_scripts": ["ADetailer"]}, "alwayson_scripts"),
    ({"script_args": [1.0, "NaN"]}, None),
])
def test_bad_scripts_get_422_naming_them(a1111, fields, reason):
    payload = {**SMALL, "prompt": "x", **fields}
    response = post(a1111, "txt2img", payload)
    if reason is None:  # a NaN cannot be sent by requests' JSON; send it raw
        raw = json.dumps(payload).replace('"NaN"', "NaN")
        response = requests.post(api(a1111, "txt2img"), data=raw, headers={"Content-Type": "application/json"},
                                 timeout=60)
        reason = "script_args"
    assert response.status_code == 422 and reason in response.json()["detail"], response.text


def test_empty_alwayson_scripts_and_no_script_are_plain_generation(a1111):
    body = txt2img(a1111, prompt="plain", seed=3, script_name="", script_args=[], alwayson_scripts={})
    assert len(body["images"]) == 1 and body["info"]["all_seeds"] == [3]


# ---- 5. a real A1111 client package -------------------------------------------------------------

def test_webuiapi_client_drives_txt2img_img2img_options_progress_and_xyz(a1111):
    import webuiapi  # a test extra (pyproject.toml)

    port = int(a1111.url.rsplit(":", 1)[1])
    client = webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=2)
    result = client.txt2img(prompt="a red circle on a blue background", width=64, height=64, seed=11)
    assert result.image.size == (64, 64) and result.info["all_seeds"] == [11]
    assert result.info["sd_model_name"] == "sd-studio-toy" and result.parameters["prompt"].startswith("a red")

    edited = client.img2img(images=[result.image], prompt="a red circle", width=64, height=64, seed=12,
                            denoising_strength=0.5)
    assert edited.image.size == (64, 64) and edited.info["denoising_strength"] == 0.5

    options = client.get_options()
    assert options["sd_model_checkpoint"].startswith("sd-studio-toy [")
    client.set_options({"sd_model_checkpoint": COPY})
    assert client.util_get_current_model().startswith(f"{COPY} [")
    client.set_options({"sd_model_checkpoint": options["sd_model_checkpoint"]})
    assert client.get_progress()["state"]["busy"] is False

    plot = client.txt2img(prompt="a red circle", width=64, height=64, seed=13, script_name="x/y/z plot",
                          script_args=xyz_args(6, "3, 9"))
    assert plot.info["index_of_first_image"] == 1
    assert parse_infotext(plot.info["infotexts"][0])["X Type"] == "CFG Scale"
    upscaled = client.extra_single_image(image=result.image, upscaler_1="Lanczos", upscaling_resize=2)
    assert upscaled.image.size == (128, 128)
    assert "x/y/z plot" in client.get_scripts()["txt2img"]
