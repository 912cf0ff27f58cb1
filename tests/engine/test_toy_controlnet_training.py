"""The toy ControlNet's training script end to end on the CPU, at a tiny size: it trains with contradicting
captions, writes a file the app's loader reads, and a run that continues another keeps that run's report."""

from __future__ import annotations

import json

from tools.controlnet.train_toy_controlnet import main
from webui.models.controlnet_files import inspect_file


def test_a_continued_run_writes_a_loadable_controlnet_and_keeps_the_earlier_report(tmp_path):
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    tiny = ["--device", "cpu", "--images", "16", "--steps", "2", "--batch", "4", "--workers", "1"]
    main([*tiny, "--out", str(first)])
    main([*tiny, "--out", str(second), "--init", str(first), "--conflict-share", "0.5", "--prompt-drop", "0.25"])
    assert inspect_file(second).family == "sd1"
    report = json.loads(second.with_suffix(".training.json").read_text(encoding="utf-8"))
    assert report["training"]["steps"] == 2
    assert report["training"]["conflict_share"] == 0.5 and report["training"]["prompt_drop"] == 0.25
    assert report["continues"] == json.loads(first.with_suffix(".training.json").read_text(encoding="utf-8"))
    assert report["continues"]["training"]["conflict_share"] == 0.3     # the default recipe
