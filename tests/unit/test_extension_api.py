"""The public extension module keeps its promises: nothing promised for this major version disappears,
and everything it exports is recorded as promised (so a new name is a deliberate, documented addition)."""

from __future__ import annotations

from pathlib import Path

from packaging.version import Version

from webui.extensions import api

PROMISED = Path(__file__).with_name(f"extension_api_v{Version(api.API_VERSION).major}.txt")


def promised_names() -> set[str]:
    lines = PROMISED.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def test_every_promised_name_is_still_exported():
    missing = sorted(name for name in promised_names() if name not in api.__all__ or not hasattr(api, name))
    assert missing == [], f"removed from webui.extensions.api without a major version bump: {missing}"


def test_every_exported_name_is_promised_and_documented():
    assert sorted(set(api.__all__) - promised_names()) == []
    docs = (Path(__file__).resolve().parents[2] / "docs" / "EXTENSIONS.md").read_text(encoding="utf-8")
    undocumented = sorted(name for name in api.__all__ if f"`{name}`" not in docs)
    assert undocumented == [], f"add these to docs/EXTENSIONS.md's reference: {undocumented}"


def test_the_version_is_semantic():
    version = Version(api.API_VERSION)
    assert len(version.release) == 3 and not version.is_prerelease
