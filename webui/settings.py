"""Typed settings built from command-line flags and an optional config file.

One `Settings` object is built at start-up and passed to whoever needs it; nothing reads argv or
environment variables anywhere else. Flag names follow A1111 so that existing launch scripts work.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Sequence

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEVICES = ("auto", "cuda", "cpu", "mps")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
SHIPPED_UPSCALERS_FOLDER = PROJECT_ROOT / "models" / "default" / "upscalers"  # the toy upscaler, read-only
SHIPPED_CONTROLNETS_FOLDER = PROJECT_ROOT / "models" / "default" / "controlnet"  # the toy canny ControlNet, read-only
SHARE_TIMEOUT_S = 15  # seconds without gradio's share link before a warning says there is none (webui.app)


class SettingsError(ValueError):
    """A flag or config value that cannot work (bad auth file, bad port...)."""


@dataclass(frozen=True)
class Settings:
    """Everything the app needs to know about where it runs and what it serves."""

    data_dir: Path = PROJECT_ROOT
    ckpt_dir: Path | None = None
    lora_dir: Path | None = None
    controlnet_dir: Path | None = None
    esrgan_models_path: Path | None = None      # A1111's upscaler folder flags
    realesrgan_models_path: Path | None = None
    dat_models_path: Path | None = None
    swinir_models_path: Path | None = None
    upscaler_dir: Path | None = None            # ComfyUI's models/upscale_models
    vae_dir: Path | None = None
    text_encoder_dir: Path | None = None
    unet_dir: Path | None = None
    embeddings_dir: Path | None = None
    outputs_dir: Path | None = None
    listen: bool = False
    port: int = 7860
    share: bool = False
    api: bool = False
    nowebui: bool = False
    device: str = "auto"
    precision: str = "auto"
    auth: tuple[tuple[str, str], ...] = ()
    insecure_no_auth: bool = False
    allowed_hosts: tuple[str, ...] = ()
    cors_allow_origins: tuple[str, ...] = ()
    max_body_mb: int = 100
    checkpoints_in_ram: int = 2
    preview_every_n_steps: int = 2
    max_image_side: int = 2048
    max_batch_images: int = 64
    max_image_pixels: int = 4096 * 4096   # uploads with more pixels are refused before decoding
    max_queue: int = 64                   # jobs queued or running, everyone together
    max_queue_per_user: int = 16          # jobs queued or running for one user
    workers: int = 1                      # workers on --device (each holds its own model)
    device_ids: tuple[str, ...] = ()      # one worker per listed CUDA device ("0,1")
    split_jobs: bool = True               # a job of several images or X/Y/Z cells runs on all free workers
    cfg_split: bool = False               # a one-image SD1/SD2/SDXL job runs its CFG halves on two free workers
    ray_address: str = ""                 # a Ray cluster whose GPUs become workers too ("" = none; webui.jobs.ray_workers)
    ray_cpu_workers: int = 0              # CPU workers to start on the Ray cluster (for clusters without GPUs)
    ray_data_dir: Path | None = None      # the data folder on the Ray machines (default: the same path as data_dir)
    job_history: int = 1000               # finished jobs kept in the job history
    job_history_days: int = 30            # ... and for at most this many days
    allow_webhooks: bool = False          # may a job name a URL the server POSTs to when it ends
    webhook_secret: str = field(default="", repr=False)  # HMAC key for webhook signatures (SDSTUDIO_WEBHOOK_SECRET)
    skip_install: bool = False
    disable_all_extensions: bool = False    # A1111's flag: load no extension, shipped ones included
    disable_extra_extensions: bool = False  # A1111's flag: load only the shipped extensions-builtin/
    enable_insecure_extension_access: bool = False  # A1111's flag: extension installs with --listen/--share
    allow_hub: bool = False  # may a request make the server download from / upload to the Hugging Face Hub
    extra: dict = field(default_factory=dict)

    # Folder properties resolve A1111's defaults under --data-dir so a single flag moves everything.
    @property
    def checkpoint_folder(self) -> Path:
        return self.ckpt_dir or self.data_dir / "models" / "Stable-diffusion"

    @property
    def lora_folder(self) -> Path:
        return self.lora_dir or self.data_dir / "models" / "Lora"

    @property
    def controlnet_folder(self) -> Path:
        """ControlNet models (sd-webui-controlnet's folder name in A1111)."""
        return self.controlnet_dir or self.data_dir / "models" / "ControlNet"

    @property
    def upscaler_folders(self) -> tuple[Path, ...]:
        """Upscaler model files: A1111's four folders, ComfyUI's `upscale_models`, then the shipped ones
        (read-only; listed last, so a user's file of the same name wins)."""
        models = self.data_dir / "models"
        return (self.esrgan_models_path or models / "ESRGAN", self.realesrgan_models_path or models / "RealESRGAN",
                self.dat_models_path or models / "DAT", self.swinir_models_path or models / "SwinIR",
                self.upscaler_dir or models / "upscale_models", SHIPPED_UPSCALERS_FOLDER)

    @property
    def vae_folder(self) -> Path:
        return self.vae_dir or self.data_dir / "models" / "VAE"

    @property
    def text_encoder_folder(self) -> Path:
        """Separate text encoders (clip_l, clip_g, t5xxl) for checkpoints that ship without them (SD3.5)."""
        return self.text_encoder_dir or self.data_dir / "models" / "text_encoder"

    @property
    def denoiser_folders(self) -> tuple[Path, ...]:
        """Transformer/UNet-only files as ComfyUI keeps them, listed with the checkpoints."""
        if self.unet_dir is not None:
            return (self.unet_dir,)
        return (self.data_dir / "models" / "unet", self.data_dir / "models" / "diffusion_models")

    @property
    def embeddings_folder(self) -> Path:
        return self.embeddings_dir or self.data_dir / "models" / "embeddings"

    @property
    def outputs_folder(self) -> Path:
        return self.outputs_dir or self.data_dir / "outputs"

    @property
    def datasets_folder(self) -> Path:
        """Training datasets: uploads land in `datasets/<output name>`, typed folders must be in here."""
        return self.data_dir / "datasets"

    @property
    def training_folder(self) -> Path:
        """Training work folder: resumable states, class images, samples, exports, user presets."""
        return self.data_dir / "training"

    @property
    def extensions_folder(self) -> Path:
        return self.data_dir / "extensions"

    @property
    def builtin_extensions_folder(self) -> Path:
        return PROJECT_ROOT / "extensions-builtin"

    @property
    def cache_folder(self) -> Path:
        return self.data_dir / "cache"

    @property
    def users_file(self) -> Path:
        """Accounts made in the Account tab or with `python -m webui.security.users_cli` (hashed)."""
        return self.data_dir / "users.json"

    @property
    def reachable_from_network(self) -> bool:
        return self.listen or self.share

    @property
    def styles_file(self) -> Path:
        return self.data_dir / "styles.csv"

    @property
    def host(self) -> str:
        """127.0.0.1 unless the user asked to be reachable from the network."""
        return "0.0.0.0" if self.listen else "127.0.0.1"

    @property
    def serve_ui(self) -> bool:
        return not self.nowebui

    @property
    def serve_api(self) -> bool:
        return self.api or self.nowebui


def build_arg_parser() -> argparse.ArgumentParser:
    """The launch.py command line (A1111 names where A1111 has the flag)."""
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="SD Studio: a Stable Diffusion web UI. Starts on the embedded default model when "
        "models/Stable-diffusion is empty.",
    )
    parser.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 instead of 127.0.0.1")
    parser.add_argument("--port", type=int, default=7860, help="HTTP port (default 7860)")
    parser.add_argument("--share", action="store_true",
                        help="ask gradio for a public share link (needs internet; asked once the server is up, "
                             f"which never waits for it: after {SHARE_TIMEOUT_S} s without an answer a warning says "
                             "there is no link, and the server keeps serving). A login is required as with --listen")
    parser.add_argument("--api", action="store_true", help="also serve the A1111-compatible /sdapi/v1 API")
    parser.add_argument("--nowebui", action="store_true", help="serve only the API, no browser UI")
    parser.add_argument("--data-dir", type=Path, default=None, help="root for models/, outputs/, cache/, config.json")
    parser.add_argument("--ckpt-dir", type=Path, default=None, help="checkpoint folder (default models/Stable-diffusion)")
    parser.add_argument("--lora-dir", type=Path, default=None, help="LoRA folder (default models/Lora)")
    parser.add_argument("--controlnet-dir", type=Path, default=None,
                        help="ControlNet models folder (default models/ControlNet)")
    for flag, folder in (("--esrgan-models-path", "ESRGAN"), ("--realesrgan-models-path", "RealESRGAN"),
                         ("--dat-models-path", "DAT"), ("--swinir-models-path", "SwinIR")):
        parser.add_argument(flag, type=Path, default=None,
                            help=f"upscaler models folder (default models/{folder}; A1111's flag)")
    parser.add_argument("--upscaler-dir", type=Path, default=None,
                        help="ComfyUI's upscaler models folder (default models/upscale_models)")
    parser.add_argument("--vae-dir", type=Path, default=None, help="VAE folder (default models/VAE)")
    parser.add_argument("--text-encoder-dir", type=Path, default=None,
                        help="separate text encoders such as clip_l/clip_g/t5xxl (default models/text_encoder)")
    parser.add_argument("--unet-dir", type=Path, default=None,
                        help="transformer-only checkpoints such as flux1-dev.safetensors, listed with the "
                             "checkpoints as unet/<name> (default: models/unet and models/diffusion_models)")
    parser.add_argument("--embeddings-dir", type=Path, default=None, help="embeddings folder (default models/embeddings)")
    parser.add_argument("--outputs-dir", type=Path, default=None, help="where images are saved (default outputs/)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="compute device (default: auto)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="weights/compute dtype (auto: fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--auth", default=None, help="require login: user:pass[,user2:pass2] (admins; visible in ps: "
                        "prefer --auth-file or the SDSTUDIO_AUTH environment variable)")
    parser.add_argument("--auth-file", type=Path, default=None, help="file with user:pass entries, one per line or comma-separated")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        help="with --listen/--share, serve WITHOUT any login: anyone who can reach the port can use "
                        "the machine's GPU and the app's files")
    parser.add_argument("--allowed-hosts", default="",
                        help="comma-separated host names the server answers to besides localhost and IP addresses "
                        "(e.g. the DNS name of a rented machine); '.example.com' allows its subdomains; '*' allows any")
    parser.add_argument("--cors-allow-origins", default="",
                        help="comma-separated origins (https://example.com) that may call the API from a browser")
    parser.add_argument("--max-body-mb", type=int, default=100, help="largest request body accepted, in MB (default 100)")
    parser.add_argument("--checkpoints-in-ram", type=int, default=None, help="recent checkpoints kept in RAM for fast switching (default 2)")
    parser.add_argument("--max-image-pixels", type=int, default=None,
                        help="refuse uploaded images with more pixels than this, before decoding them "
                        "(default 16777216 = 4096x4096)")
    parser.add_argument("--max-queue", type=int, default=None,
                        help="jobs queued or running at once, all users together; more are refused with 503 (default 64)")
    parser.add_argument("--max-queue-per-user", type=int, default=None,
                        help="jobs queued or running at once for one user; more are refused with 429 (default 16)")
    parser.add_argument("--workers", type=int, default=None,
                        help="workers taking jobs on --device, each with its own copy of the model (default 1; "
                        "two on a CPU let two checkpoints generate at once)")
    parser.add_argument("--device-ids", default="",
                        help="comma-separated CUDA device numbers, one worker each (e.g. 0,1); overrides --workers")
    parser.add_argument("--no-split-jobs", action="store_true",
                        help="run every job on one worker; by default, with several workers, a txt2img/img2img "
                        "job of several images or an X/Y/Z plot is split across the workers that are free")
    parser.add_argument("--cfg-split", action="store_true",
                        help="a one-image SD1/SD2/SDXL job taken while another worker is free runs the two halves of "
                        "each classifier-free-guidance UNet call on both workers' devices at once (for two GPUs; "
                        "default off)")
    parser.add_argument("--ray-address", default="",
                        help="also hand jobs to workers on a Ray cluster: 'auto' (the cluster this machine joined with "
                        "'ray start'), 'HOST:PORT' or 'ray://HOST:PORT' (Ray's client port), or 'local' (start a Ray "
                        "instance on this machine, for trying it); each GPU of the cluster becomes a worker "
                        "(needs the 'ray' extra: pip install ray)")
    parser.add_argument("--ray-cpu-workers", type=int, default=0,
                        help="with --ray-address: also start N workers on the cluster's CPUs (for clusters without "
                        "GPUs; default 0)")
    parser.add_argument("--ray-data-dir", type=Path, default=None,
                        help="with --ray-address: the data folder (models/ and the rest) on the Ray machines "
                        "(default: the same path as --data-dir)")
    parser.add_argument("--job-history", type=int, default=None,
                        help="finished jobs kept in the job history (default 1000)")
    parser.add_argument("--job-history-days", type=int, default=None,
                        help="days a finished job is kept in the job history (default 30)")
    parser.add_argument("--allow-webhooks", action="store_true",
                        help="let jobs name a webhook URL the server POSTs to when they end (signed with "
                        "HMAC-SHA256 when SDSTUDIO_WEBHOOK_SECRET is set); off by default, since it makes the server "
                        "contact addresses a client chooses")
    parser.add_argument("--disable-all-extensions", action="store_true",
                        help="load no extension (the Extensions tab still lists them)")
    parser.add_argument("--disable-extra-extensions", action="store_true",
                        help="load only the shipped extensions in extensions-builtin/")
    parser.add_argument("--enable-insecure-extension-access", action="store_true",
                        help="with --listen/--share, still let admins install, update and uninstall extensions from "
                        "the Extensions tab (an extension runs code with the app's rights; refused by default)")
    parser.add_argument("--skip-install", action="store_true",
                        help="do not create/update the virtual environment, nor install extensions' requirements")
    parser.add_argument("--allow-hub", action="store_true",
                        help="let requests download checkpoints and captioning models from the Hugging Face Hub "
                             "and upload trained models to it (default: off, no request makes the server contact the Hub)")
    return parser


def parse_auth_entries(text: str) -> tuple[tuple[str, str], ...]:
    """Parse `user:pass` entries separated by commas or newlines."""
    entries = []
    for raw in text.replace("\n", ",").split(","):
        raw = raw.strip()
        if not raw:
            continue
        user, sep, password = raw.partition(":")
        if not sep or not user or not password:
            raise SettingsError(f"auth entry {raw!r} is not in the form user:password")
        entries.append((user, password))
    return tuple(entries)


def load_config_file(path: Path) -> dict:
    """Read `config.json` (UI-saved options); a missing file is an empty config."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SettingsError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a JSON object")
    return data


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def settings_from_args(argv: Sequence[str], environ: dict[str, str] | None = None) -> Settings:
    """Build Settings from a command line: flags win over config.json, which wins over defaults.

    `environ` (default: the process environment) may hold SDSTUDIO_AUTH, same form as --auth, so that
    passwords need not appear in the process list.
    """
    args = build_arg_parser().parse_args(list(argv))
    environ = os.environ if environ is None else environ
    data_dir = (args.data_dir or PROJECT_ROOT).resolve()
    config = load_config_file(data_dir / "config.json")
    if not 1 <= args.port <= 65535:
        raise SettingsError(f"--port {args.port} is outside 1..65535")
    auth: tuple[tuple[str, str], ...] = ()
    if args.auth:
        auth += parse_auth_entries(args.auth)
    if environ.get("SDSTUDIO_AUTH"):
        auth += parse_auth_entries(environ["SDSTUDIO_AUTH"])
    if args.max_body_mb < 1:
        raise SettingsError("--max-body-mb must be at least 1")
    origins = _comma_list(args.cors_allow_origins)
    for origin in origins:
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise SettingsError(f"--cors-allow-origins entry {origin!r} must look like https://host[:port]")
    if args.auth_file:
        try:
            auth += parse_auth_entries(args.auth_file.read_text(encoding="utf-8"))
        except OSError as error:
            raise SettingsError(f"cannot read --auth-file {args.auth_file}: {error}") from error
    known = {f.name for f in fields(Settings)}
    checkpoints_in_ram = args.checkpoints_in_ram or int(config.get("checkpoints_in_ram", 2))
    if checkpoints_in_ram < 1:
        raise SettingsError("--checkpoints-in-ram must be at least 1")
    limits = {}
    for flag, name in (("--max-image-pixels", "max_image_pixels"), ("--max-queue", "max_queue"),
                       ("--max-queue-per-user", "max_queue_per_user"), ("--workers", "workers"),
                       ("--job-history", "job_history"), ("--job-history-days", "job_history_days")):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SettingsError(f"{flag} must be at least 1")
        if value is not None:
            limits[name] = value
    device_ids = _comma_list(args.device_ids)
    for device_id in device_ids:
        if not device_id.isdigit():
            raise SettingsError(f"--device-ids entry {device_id!r} must be a CUDA device number such as 0")
    if args.ray_cpu_workers < 0:
        raise SettingsError("--ray-cpu-workers must be 0 or more")
    if (args.ray_cpu_workers or args.ray_data_dir) and not args.ray_address:
        raise SettingsError("--ray-cpu-workers and --ray-data-dir need --ray-address")
    return Settings(
        **limits,
        device_ids=device_ids,
        split_jobs=not args.no_split_jobs,
        cfg_split=args.cfg_split,
        ray_address=args.ray_address.strip(),
        ray_cpu_workers=args.ray_cpu_workers,
        ray_data_dir=args.ray_data_dir,
        allow_webhooks=args.allow_webhooks,
        webhook_secret=environ.get("SDSTUDIO_WEBHOOK_SECRET", ""),
        data_dir=data_dir,
        ckpt_dir=args.ckpt_dir,
        lora_dir=args.lora_dir,
        controlnet_dir=args.controlnet_dir,
        esrgan_models_path=args.esrgan_models_path,
        realesrgan_models_path=args.realesrgan_models_path,
        dat_models_path=args.dat_models_path,
        swinir_models_path=args.swinir_models_path,
        upscaler_dir=args.upscaler_dir,
        vae_dir=args.vae_dir,
        text_encoder_dir=args.text_encoder_dir,
        unet_dir=args.unet_dir,
        embeddings_dir=args.embeddings_dir,
        outputs_dir=args.outputs_dir,
        listen=args.listen,
        port=args.port,
        share=args.share,
        api=args.api,
        nowebui=args.nowebui,
        device=args.device,
        precision=args.precision,
        auth=auth,
        insecure_no_auth=args.insecure_no_auth,
        allowed_hosts=tuple(h.lower() for h in _comma_list(args.allowed_hosts)),
        cors_allow_origins=origins,
        max_body_mb=args.max_body_mb,
        checkpoints_in_ram=checkpoints_in_ram,
        skip_install=args.skip_install,
        disable_all_extensions=args.disable_all_extensions,
        disable_extra_extensions=args.disable_extra_extensions,
        enable_insecure_extension_access=args.enable_insecure_extension_access,
        allow_hub=args.allow_hub,
        extra={k: v for k, v in config.items() if k not in known},
    )
