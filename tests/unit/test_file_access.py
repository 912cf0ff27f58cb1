"""The one file-access rule (webui.security.paths): user-supplied paths land in the app's folders or are refused.

Everything here uses real folders and real symlinks under a temporary data folder; "outside" is a sibling
folder holding a secret file, the way a machine's other files sit next to the app's data.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest

from webui.security.paths import (
    BATCH_INPUT,
    BATCH_OUTPUT,
    CAPTION_MODEL,
    DATASET,
    RESUME_STATE,
    TRAINING_STATES,
    FileAccess,
    PathRefused,
    is_within,
)
from webui.settings import settings_from_args


@pytest.fixture
def layout(tmp_path):
    data = tmp_path / "data"
    for folder in ("models", "outputs", "datasets/my-set", "training/states/run-state", "extensions"):
        (data / folder).mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("API_KEY=do-not-leak")
    (data / "datasets" / "escape").symlink_to(outside, target_is_directory=True)
    (data / "datasets" / "escape-missing").symlink_to(tmp_path / "missing", target_is_directory=True)
    return data, outside, tmp_path / "missing"


@pytest.fixture
def files(layout) -> FileAccess:
    data, _, _ = layout
    return FileAccess.from_settings(settings_from_args(["--data-dir", str(data)]))


def refusal(files: FileAccess, text, use=DATASET) -> str:
    with pytest.raises(PathRefused) as refused:
        files.resolve(text, use)
    assert isinstance(refused.value, ValueError)  # 422 over HTTP, a gr.Error in the UI
    return str(refused.value)


def test_relative_names_start_in_the_uses_main_folder(files, layout):
    data, _, _ = layout
    real = Path(os.path.realpath(data))
    assert files.resolve("my-set", DATASET) == real / "datasets" / "my-set"
    assert files.resolve("  my-set  ", DATASET) == real / "datasets" / "my-set"
    assert files.resolve("not-made-yet", DATASET) == real / "datasets" / "not-made-yet"  # existence is the caller's
    assert files.resolve("my-set/10_sks dog/../10_sks dog", DATASET) == real / "datasets" / "my-set" / "10_sks dog"
    assert files.resolve(str(data / "datasets" / "my-set"), DATASET) == real / "datasets" / "my-set"
    assert files.resolve("batch-out", BATCH_OUTPUT) == real / "outputs" / "batch-out"
    assert files.resolve(str(data / "datasets" / "my-set"), BATCH_OUTPUT) == real / "datasets" / "my-set"
    assert files.resolve("blip", CAPTION_MODEL) == real / "models" / "blip"
    assert files.resolve("run-state", RESUME_STATE) == real / "training" / "states" / "run-state"


def test_each_use_accepts_only_its_own_folders(files, layout):
    data, _, _ = layout
    assert "datasets/" in refusal(files, str(data / "outputs"), DATASET)
    assert "outputs/" in refusal(files, str(data / "models"), BATCH_INPUT)
    assert "models/" in refusal(files, str(data / "datasets" / "my-set"), CAPTION_MODEL)
    # torch-loaded training states only from where training wrote them, never from an upload folder
    message = refusal(files, str(data / "datasets" / "my-set"), RESUME_STATE)
    assert "training/states/" in message
    assert "datasets/" in refusal(files, str(data), DATASET)  # the data folder itself (config.json...) is not owned


@pytest.mark.parametrize("text", [
    "/etc", "/etc/passwd", "/", "..", "../..", "../../../../../../../../etc", "my-set/../../../etc",
    "../training/states/run-state",
])
def test_absolute_paths_and_dot_dot_chains_out_of_the_folder_are_refused(files, text):
    message = refusal(files, text)
    assert repr(text) in message and "datasets/" in message


def test_a_symlink_inside_pointing_outside_is_refused_and_one_outside_pointing_in_is_followed(files, layout, tmp_path):
    data, outside, _ = layout
    assert "datasets/" in refusal(files, "escape")
    assert "datasets/" in refusal(files, str(data / "datasets" / "escape" / "secret.txt"))
    shortcut = tmp_path / "shortcut"
    shortcut.symlink_to(data / "datasets" / "my-set", target_is_directory=True)
    assert files.resolve(str(shortcut), DATASET) == Path(os.path.realpath(data / "datasets" / "my-set"))


@pytest.mark.parametrize("text", [
    "%2e%2e%2f%2e%2e%2fetc", "%2Fetc", "my-set%2F..%2F..", "..%252f..%252fetc",
    "~", "~/secret", "~root", "my-set\x00/../../etc", "my\nset", "a\tb",
    "..\\..\\etc", "C:\\Windows", "c:/windows", "\\\\server\\share",
])
def test_encoded_home_nul_backslash_and_drive_forms_are_refused(files, text):
    message = refusal(files, text)
    assert "datasets/" in message


def test_the_refusal_is_the_same_for_an_existing_and_a_missing_outside_path(files, layout):
    data, outside, missing = layout
    pairs = [
        (str(outside), str(missing)),
        (str(outside / "secret.txt"), str(missing / "secret.txt")),
        (os.path.relpath(outside, data / "datasets"), os.path.relpath(missing, data / "datasets")),
        ("escape", "escape-missing"),
        (quote(str(outside), safe=""), quote(str(missing), safe="")),
    ]
    for present, absent in pairs:
        first = refusal(files, present).replace(present, "<typed>")
        second = refusal(files, absent).replace(absent, "<typed>")
        assert first == second
        assert "API_KEY" not in first and "exist" not in first


def test_wrong_types_and_empty_text_are_refused(files):
    assert "enter a folder" in refusal(files, "")
    assert "enter a folder" in refusal(files, "   ")
    assert "enter a folder" in refusal(files, None)
    refusal(files, 42)
    refusal(files, ["/etc"])


def test_folder_flags_add_their_folders(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "my-outputs"
    files = FileAccess.from_settings(settings_from_args(["--data-dir", str(data), "--outputs-dir", str(elsewhere)]))
    assert files.resolve("x", BATCH_OUTPUT) == Path(os.path.realpath(elsewhere)) / "x"
    assert str(elsewhere) in refusal(files, str(data / "outputs"), BATCH_OUTPUT)


def test_the_states_root_is_where_training_writes_its_states(tmp_path):
    from webui.training.loop import TrainingPaths

    settings = settings_from_args(["--data-dir", str(tmp_path)])
    paths = TrainingPaths(lora_dir=settings.lora_folder, embeddings_dir=settings.embeddings_folder,
                          checkpoints_dir=settings.checkpoint_folder, work_dir=settings.training_folder)
    assert FileAccess.from_settings(settings).root(TRAINING_STATES) == paths.states_dir


def test_is_within_resolves_symlinks(layout):
    data, outside, _ = layout
    datasets = data / "datasets"
    assert is_within(datasets / "my-set", datasets)
    assert is_within(datasets, datasets)
    assert not is_within(datasets / "escape", datasets)
    assert not is_within(datasets / "escape" / "secret.txt", datasets)
    assert not is_within(data / "datasets-other", datasets)  # a name that only starts the same
