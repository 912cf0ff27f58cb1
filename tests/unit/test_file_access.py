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
from webui.security.identity import ADMIN, LOCAL_ADMIN, USER, User
from webui.settings import settings_from_args

ANNA, BEN = User("anna", USER), User("ben", USER)


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


def refusal(files: FileAccess, text, use=DATASET, user: User | None = None) -> str:
    with pytest.raises(PathRefused) as refused:
        files.resolve(text, use, user)
    assert isinstance(refused.value, ValueError)  # 422 over HTTP, a gr.Error in the UI
    return str(refused.value)


def test_relative_names_start_in_the_uses_main_folder(files, layout):
    data, _, _ = layout
    real = Path(os.path.realpath(data))
    assert files.resolve("my-set", DATASET, None) == real / "datasets" / "my-set"
    assert files.resolve("  my-set  ", DATASET, None) == real / "datasets" / "my-set"
    assert files.resolve("not-made-yet", DATASET, None) == real / "datasets" / "not-made-yet"  # existence is the caller's
    assert files.resolve("my-set/10_sks dog/../10_sks dog", DATASET, None) == real / "datasets" / "my-set" / "10_sks dog"
    assert files.resolve(str(data / "datasets" / "my-set"), DATASET, None) == real / "datasets" / "my-set"
    assert files.resolve("batch-out", BATCH_OUTPUT, None) == real / "outputs" / "batch-out"
    assert files.resolve(str(data / "datasets" / "my-set"), BATCH_OUTPUT, None) == real / "datasets" / "my-set"
    assert files.resolve("blip", CAPTION_MODEL, None) == real / "models" / "blip"
    assert files.resolve("run-state", RESUME_STATE, None) == real / "training" / "states" / "run-state"


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
    assert files.resolve(str(shortcut), DATASET, None) == Path(os.path.realpath(data / "datasets" / "my-set"))


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
    assert files.resolve("x", BATCH_OUTPUT, None) == Path(os.path.realpath(elsewhere)) / "x"
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


def test_a_plain_user_works_in_their_own_part_of_datasets_and_outputs(files, layout):
    data, _, _ = layout
    real = Path(os.path.realpath(data))
    assert files.resolve("my-set", DATASET, ANNA) == real / "datasets" / "users" / "anna" / "my-set"
    assert files.resolve("in", BATCH_INPUT, ANNA) == real / "datasets" / "users" / "anna" / "in"
    assert files.resolve("out", BATCH_OUTPUT, ANNA) == real / "outputs" / "users" / "anna" / "out"
    own_outputs = str(data / "outputs" / "users" / "anna" / "txt2img-images")
    assert files.resolve(own_outputs, BATCH_INPUT, ANNA) == real / "outputs" / "users" / "anna" / "txt2img-images"
    assert files.outputs_for(ANNA) == data / "outputs" / "users" / "anna"
    assert files.outputs_subfolder(ANNA) == "users/anna"
    # shared roots stay shared: the captioning model folder and training states are not per user
    assert files.resolve("blip", CAPTION_MODEL, ANNA) == real / "models" / "blip"


def test_admins_and_the_app_keep_the_whole_folders_in_a1111_layout(files, layout):
    data, _, _ = layout
    real = Path(os.path.realpath(data))
    for who in (None, LOCAL_ADMIN, User("boss", ADMIN)):
        assert files.resolve("my-set", DATASET, who) == real / "datasets" / "my-set"
        assert files.resolve("users/anna/my-set", DATASET, who) == real / "datasets" / "users" / "anna" / "my-set"
        assert files.outputs_for(who) == data / "outputs"
        assert files.outputs_subfolder(who) == ""


def test_another_users_folder_is_refused_like_an_outside_path_whether_or_not_it_exists(files, layout):
    data, _, _ = layout
    (data / "datasets" / "users" / "anna" / "cats").mkdir(parents=True)
    (data / "outputs" / "users" / "anna" / "txt2img-images").mkdir(parents=True)
    pairs = [
        (str(data / "datasets" / "users" / "anna" / "cats"), str(data / "datasets" / "users" / "anna" / "dogs")),
        (str(data / "outputs" / "users" / "anna" / "txt2img-images"), str(data / "outputs" / "users" / "nobody")),
        ("../anna/cats", "../anna/dogs"),
        ("../../my-set", "../../no-set"),  # the admin's folder beside the users' folders
        (str(data / "datasets" / "my-set"), str(data / "datasets" / "no-set")),
    ]
    for use in (DATASET, BATCH_INPUT, BATCH_OUTPUT):
        for present, absent in pairs:
            first = refusal(files, present, use, BEN).replace(present, "<typed>")
            assert first == refusal(files, absent, use, BEN).replace(absent, "<typed>")
            assert "users/ben/" in first and "anna" not in first


def test_an_account_name_that_is_no_folder_name_gets_no_folder(files):
    for name in ("..", ".", ".hidden"):
        with pytest.raises(PathRefused):
            files.resolve("my-set", DATASET, User(name, USER))


def test_a_stored_outputs_subfolder_must_stay_inside_outputs(files, layout):
    data, _, _ = layout
    assert files.saved_outputs("users/anna") == data / "outputs" / "users" / "anna"
    assert files.saved_outputs("") == data / "outputs"  # A1111's layout, as configured
    for bad in ("..", "users/../../datasets", "/etc", str(data / "outputs")):
        with pytest.raises(PathRefused):
            files.saved_outputs(bad)
