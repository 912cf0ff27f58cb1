"""A1111 prompt styles kept in ``styles.csv``.

Users carry their ``styles.csv`` over from A1111, so the file format (columns
``name,prompt,negative_prompt``, UTF-8 with BOM, the old ``name,text`` layout
still readable) and the way a style merges into a prompt match A1111 v1.10.
The database re-reads the file when it changes on disk, so edits made in a text
editor show up without a restart.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PROMPT_PLACEHOLDER = "{prompt}"
CSV_COLUMNS = ("name", "prompt", "negative_prompt")
LEGACY_PROMPT_COLUMN = "text"
COMMENT_PREFIX = "#"
# A1111 reads and writes styles.csv as UTF-8 with a byte-order mark.
CSV_ENCODING = "utf-8-sig"


@dataclass(frozen=True)
class PromptStyle:
    """One named style: text merged into the prompt and into the negative prompt."""

    name: str
    prompt: str
    negative_prompt: str


class UnknownStyleError(KeyError, ValueError):
    """A requested style name is not in the database; the message lists the valid names."""

    def __init__(self, style_name: str, known_names: Sequence[str]) -> None:
        self.style_name = style_name
        listing = ", ".join(repr(name) for name in known_names) if known_names else "(no styles defined)"
        self.message = f"unknown style {style_name!r}; valid styles: {listing}"
        super().__init__(self.message)

    def __str__(self) -> str:
        # KeyError would show the message repr-quoted; users should read it plainly.
        return self.message


class StyleFileError(ValueError):
    """``styles.csv`` exists but cannot be decoded or parsed."""


def merge_style_text(style_text: str, prompt: str) -> str:
    """Merge one style's text into a prompt, A1111's way.

    A style containing ``{prompt}`` is a template and the prompt goes where the
    placeholder is; any other style is appended after ``", "``. Empty parts are
    skipped so no dangling comma appears.
    """
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    """What identifies one version of the file on disk; None when it does not exist."""
    try:
        stat_result = path.stat()
    except FileNotFoundError:
        return None
    return (stat_result.st_mtime_ns, stat_result.st_size, stat_result.st_ino)


def _read_styles_csv(path: Path) -> dict[str, PromptStyle]:
    """Parse a styles.csv into name -> style, in file order; later duplicates win."""
    try:
        raw_text = path.read_text(encoding=CSV_ENCODING)
    except UnicodeDecodeError as error:
        raise StyleFileError(f"{path} is not UTF-8 text: {error}") from error

    styles: dict[str, PromptStyle] = {}
    try:
        reader = csv.DictReader(io.StringIO(raw_text, newline=""), skipinitialspace=True)
        if reader.fieldnames is None:
            return styles
        if "name" not in reader.fieldnames:
            raise StyleFileError(f"{path} has no 'name' column (columns: {', '.join(reader.fieldnames)})")
        prompt_column = "prompt" if "prompt" in reader.fieldnames else LEGACY_PROMPT_COLUMN
        for row in reader:
            name = row.get("name") or ""
            if not name or name.startswith(COMMENT_PREFIX):
                continue
            styles[name] = PromptStyle(
                name=name,
                prompt=row.get(prompt_column) or "",
                negative_prompt=row.get("negative_prompt") or "",
            )
    except csv.Error as error:
        raise StyleFileError(f"{path} is not a valid styles CSV: {error}") from error
    return styles


class StyleDatabase:
    """Styles from one ``styles.csv``; missing file = no styles. Safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._styles: dict[str, PromptStyle] = {}
        self._loaded_signature: tuple[int, int, int] | None = None
        with self._lock:
            self._reload_if_changed(force=True)

    @property
    def path(self) -> Path:
        return self._path

    def names(self) -> list[str]:
        """Style names in file order."""
        with self._lock:
            self._reload_if_changed()
            return list(self._styles)

    def get(self, name: str) -> PromptStyle:
        """The style called ``name``; raises :class:`UnknownStyleError` when there is none."""
        with self._lock:
            self._reload_if_changed()
            return self._lookup(name)

    def apply(self, prompt: str, negative_prompt: str, style_names: Sequence[str]) -> tuple[str, str]:
        """Apply the named styles in order to both prompts; returns (prompt, negative_prompt).

        All names are checked before anything is applied, so a typo fails the
        whole request instead of half-styling it.
        """
        with self._lock:
            self._reload_if_changed()
            styles = [self._lookup(name) for name in style_names]
        for style in styles:
            prompt = merge_style_text(style.prompt, prompt)
            negative_prompt = merge_style_text(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def save(self, style: PromptStyle) -> None:
        """Add ``style`` or replace the one with the same name (keeping its position), then write the file.

        The file is re-read first so edits made on disk meanwhile are kept, and
        written to a temporary file that replaces the old one in one step, so a
        crash never leaves a truncated styles.csv.
        """
        if not style.name.strip():
            raise ValueError("a style needs a non-empty name")
        if style.name.startswith(COMMENT_PREFIX):
            raise ValueError(f"style names cannot start with {COMMENT_PREFIX!r}: A1111 reads such rows as comments")
        with self._lock:
            self._reload_if_changed()
            updated = dict(self._styles)
            updated[style.name] = style
            self._write_atomically(updated.values())
            self._styles = updated
            self._loaded_signature = _file_signature(self._path)

    def _lookup(self, name: str) -> PromptStyle:
        try:
            return self._styles[name]
        except KeyError:
            raise UnknownStyleError(name, list(self._styles)) from None

    def _reload_if_changed(self, force: bool = False) -> None:
        """Re-read the file if it appeared, vanished or changed since the last read (caller holds the lock)."""
        signature = _file_signature(self._path)
        if not force and signature == self._loaded_signature:
            return
        self._styles = _read_styles_csv(self._path) if signature is not None else {}
        self._loaded_signature = signature

    def _write_atomically(self, styles: Iterable[PromptStyle]) -> None:
        """Write all styles to a sibling temporary file, flush it to disk, then rename it over the real one."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary_path = self._path.with_name(f".{self._path.name}.{secrets.token_hex(8)}.tmp")
        try:
            with open(temporary_path, "x", encoding=CSV_ENCODING, newline="") as temporary_file:
                writer = csv.writer(temporary_file)
                writer.writerow(CSV_COLUMNS)
                for style in styles:
                    writer.writerow((style.name, style.prompt, style.negative_prompt))
                temporary_file.flush()
                os.fsync(temporary_file.fileno())
            os.replace(temporary_path, self._path)
        finally:
            temporary_path.unlink(missing_ok=True)
