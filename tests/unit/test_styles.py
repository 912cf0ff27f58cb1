"""A1111 styles.csv: reading, applying, saving, reloading."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from webui.generation.styles import PromptStyle, StyleDatabase, UnknownStyleError

A1111_STYLES_CSV = (
    "\ufeffname,prompt,negative_prompt\n"
    'Cinematic,"cinematic still of {prompt}, film grain","cartoon, drawing"\n'
    'Sharp,"highly detailed, sharp focus",blurry\n'
    "Empty,,\n"
)


@pytest.fixture
def styles_path(tmp_path: Path) -> Path:
    path = tmp_path / "styles.csv"
    path.write_text(A1111_STYLES_CSV, encoding="utf-8")
    return path


def test_names_in_file_order(styles_path: Path) -> None:
    assert StyleDatabase(styles_path).names() == ["Cinematic", "Sharp", "Empty"]


def test_missing_file_is_an_empty_database(tmp_path: Path) -> None:
    database = StyleDatabase(tmp_path / "nowhere" / "styles.csv")
    assert database.names() == []
    assert database.apply("a cat", "ugly", []) == ("a cat", "ugly")


def test_placeholder_style_wraps_the_prompt(styles_path: Path) -> None:
    prompt, negative = StyleDatabase(styles_path).apply("a red fox", "lowres", ["Cinematic"])
    assert prompt == "cinematic still of a red fox, film grain"
    assert negative == "lowres, cartoon, drawing"


def test_plain_style_is_appended_and_styles_apply_in_order(styles_path: Path) -> None:
    prompt, negative = StyleDatabase(styles_path).apply("a red fox", "", ["Sharp", "Cinematic"])
    assert prompt == "cinematic still of a red fox, highly detailed, sharp focus, film grain"
    assert negative == "blurry, cartoon, drawing"


def test_no_comma_when_prompt_or_style_is_empty(styles_path: Path) -> None:
    database = StyleDatabase(styles_path)
    assert database.apply("", "", ["Sharp"]) == ("highly detailed, sharp focus", "blurry")
    assert database.apply("a cat", "ugly", ["Empty"]) == ("a cat", "ugly")


def test_unknown_style_names_it_and_lists_valid_ones(styles_path: Path) -> None:
    with pytest.raises(UnknownStyleError) as caught:
        StyleDatabase(styles_path).apply("a cat", "", ["Sharp", "Cinematik"])
    message = str(caught.value)
    assert "'Cinematik'" in message
    assert "'Cinematic'" in message and "'Sharp'" in message and "'Empty'" in message
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)


def test_save_adds_and_replaces_in_place(styles_path: Path) -> None:
    database = StyleDatabase(styles_path)
    database.save(PromptStyle("Sharp", "razor sharp, {prompt}", "soft"))
    database.save(PromptStyle("Anime", "anime style", "photo, 3d"))

    assert database.names() == ["Cinematic", "Sharp", "Empty", "Anime"]
    assert database.apply("a cat", "", ["Sharp"]) == ("razor sharp, a cat", "soft")

    with open(styles_path, encoding="utf-8-sig", newline="") as styles_file:
        rows = list(csv.reader(styles_file))
    assert rows[0] == ["name", "prompt", "negative_prompt"]
    assert rows[2] == ["Sharp", "razor sharp, {prompt}", "soft"]
    assert rows[4] == ["Anime", "anime style", "photo, 3d"]
    assert StyleDatabase(styles_path).names() == ["Cinematic", "Sharp", "Empty", "Anime"]


def test_save_creates_the_file_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "config" / "styles.csv"
    StyleDatabase(path).save(PromptStyle("Only", "only", ""))
    assert sorted(os.listdir(path.parent)) == ["styles.csv"]
    assert path.read_bytes().startswith(b"\xef\xbb\xbfname,prompt,negative_prompt")


def test_failed_save_keeps_the_old_file(styles_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original_bytes = styles_path.read_bytes()

    def failing_replace(source: object, destination: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        StyleDatabase(styles_path).save(PromptStyle("New", "new", ""))

    assert styles_path.read_bytes() == original_bytes
    assert sorted(os.listdir(styles_path.parent)) == ["styles.csv"]


def test_rereads_file_changed_on_disk(styles_path: Path) -> None:
    database = StyleDatabase(styles_path)
    assert "Watercolor" not in database.names()

    styles_path.write_text("name,prompt,negative_prompt\nWatercolor,watercolor painting,\n", encoding="utf-8")
    stat_result = styles_path.stat()
    os.utime(styles_path, ns=(stat_result.st_atime_ns, stat_result.st_mtime_ns + 5_000_000_000))

    assert database.names() == ["Watercolor"]
    styles_path.unlink()
    assert database.names() == []


def test_reads_legacy_name_text_layout_and_skips_comments(tmp_path: Path) -> None:
    path = tmp_path / "styles.csv"
    path.write_text("name,text\n# a comment row,ignored\nOld,old style text\n", encoding="utf-8")
    database = StyleDatabase(path)
    assert database.names() == ["Old"]
    assert database.apply("x", "y", ["Old"]) == ("x, old style text", "y")
