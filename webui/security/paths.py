"""Which files a request may touch: one resolver that maps a user-supplied path into a folder the app owns.

A path typed into a widget, sent in a JSON field or passed by an extension is never opened as it is.
It goes through `FileAccess.resolve` with a `PathUse` that says what it is for and which of the app's
folders ("roots") it may be in. The resolver resolves symlinks (realpath) first and then checks
containment, so `../`, absolute paths and a symlink inside `datasets/` that points elsewhere are all
refused, while a symlink elsewhere that points into an owned folder is just another name for it.

The refusal (`PathRefused`, a `ValueError`: 422 over HTTP, a `gr.Error` in the UI) names the folders
that are allowed and echoes what the user typed, but its text is the same whether or not the path
exists, so a refusal is never a way to probe the machine's file system. Inside an owned folder, saying
"does not exist" is the caller's business and fine.

Each user has their own part of `outputs/` and `datasets/`. A plain user's paths are judged against
`outputs/users/<name>/` and `datasets/users/<name>/` instead of the whole folders (a relative name starts
there, and their saved generations go there); everything else, other users' folders included, is refused
with the same text as any outside path, whether it exists or not. Admins, and the single person at a
server without accounts (`LOCAL_ADMIN`), keep the whole folders, so an A1111 user who runs alone still
finds `outputs/txt2img-images/`. The `users/` level keeps a user's folder apart from the app's own
subfolders (a user named `txt2img-images` must not get the admin's images). The caller passes the
identity (`User`, or None for the app's own code and the command line) on every call.

Forms that only an attacker or a confused client would send are refused before any file system call:
NUL and other control characters, `~` (another user's home), backslashes and Windows drive names (on
POSIX they are file name characters, and an app that later runs on Windows must not change meaning),
and URL-encoded sequences such as `%2e%2e%2f` (a layer that decodes twice must not turn them into `../`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from webui.security.identity import User
from webui.security.users import USER_NAME_PATTERN
from webui.settings import Settings

# The roots: folders the app owns. A use lists the ones it accepts; its first one is where a
# relative path starts ("my-set" in the dataset box means <data>/datasets/my-set).
MODELS = "models"
CHECKPOINTS = "checkpoints"
LORA = "lora"
VAE = "vae"
EMBEDDINGS = "embeddings"
OUTPUTS = "outputs"
DATASETS = "datasets"
EXTENSIONS = "extensions"
TRAINING = "training"
TRAINING_STATES = "training states"
TRAINING_STATES_FOLDER = "states"  # `TrainingPaths.states_dir` is <training work folder>/states

# A plain user's own part of these roots is <root>/users/<name>/ (see the module docstring).
PER_USER_ROOTS = frozenset({OUTPUTS, DATASETS})
USERS_FOLDER = "users"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PERCENT_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
MAX_ECHO = 200


class PathRefused(ValueError):
    """A user-supplied path that is outside the folders its use may touch, or written in a refused form.

    The message is the same for an existing and a missing path: it only echoes what the user typed and
    says where such a path has to be.
    """


@dataclass(frozen=True)
class PathUse:
    """What a user-supplied path is for and which roots it may be in (the first takes relative paths)."""

    label: str
    roots: tuple[str, ...]


# Each place that takes a path from a request names one of these.
DATASET = PathUse("dataset folder", (DATASETS,))
BATCH_INPUT = PathUse("batch input folder", (DATASETS, OUTPUTS))
BATCH_MASKS = PathUse("batch mask folder", (DATASETS, OUTPUTS))
BATCH_OUTPUT = PathUse("batch output folder", (OUTPUTS, DATASETS))
CAPTION_MODEL = PathUse("captioning model folder", (MODELS,))
# Training states are read back with torch's loader: only folders the training loop itself wrote.
RESUME_STATE = PathUse("resume_from (training state folder)", (TRAINING_STATES,))


def is_within(path: Path | str, folder: Path | str) -> bool:
    """Whether `path` is `folder` or inside it, both with symlinks resolved.

    Listing code uses this for entries it finds inside an accepted folder (a file or subfolder that is a
    symlink to elsewhere must not be read or written through).
    """
    real = Path(os.path.realpath(path))
    root = Path(os.path.realpath(folder))
    return real == root or root in real.parents


def confined_user(user: User | None) -> str | None:
    """The name whose own folders bound `user`'s paths; None for an admin or the app's own code (no user)."""
    if user is None or user.is_admin:
        return None
    if not USER_NAME_PATTERN.match(user.name):  # "..", ".hidden": never a folder name (users.py refuses them too)
        raise PathRefused(f"the account name {user.name!r} cannot own folders; ask an admin to rename the account")
    return user.name


class FileAccess:
    """The folders this server owns, and the one rule that maps user-supplied paths into them.

    Built once from `Settings` (`from_settings`); roots are resolved on every call, so a folder that is
    created (or replaced by a symlink) while the server runs is judged as it is now.
    """

    def __init__(self, roots: Mapping[str, Path], data_dir: Path) -> None:
        self._roots = {name: Path(os.path.abspath(path)) for name, path in roots.items()}
        self._data_dir = Path(os.path.abspath(data_dir))

    @classmethod
    def from_settings(cls, settings: Settings) -> FileAccess:
        """The data folder's models/, outputs/, datasets/, extensions/, training/ and any folder flag given."""
        roots = {
            MODELS: settings.data_dir / "models",
            CHECKPOINTS: settings.checkpoint_folder,
            LORA: settings.lora_folder,
            VAE: settings.vae_folder,
            EMBEDDINGS: settings.embeddings_folder,
            OUTPUTS: settings.outputs_folder,
            DATASETS: settings.datasets_folder,
            EXTENSIONS: settings.extensions_folder,
            TRAINING: settings.training_folder,
            TRAINING_STATES: settings.training_folder / TRAINING_STATES_FOLDER,
        }
        return cls(roots, settings.data_dir)

    def root(self, name: str) -> Path:
        """The folder a root name stands for (as configured, symlinks not resolved)."""
        return self._roots[name]

    def root_for(self, name: str, user: User | None) -> Path:
        """The part of root `name` that `user` may touch: a plain user's own `<root>/users/<name>/` for
        outputs/ and datasets/, the whole folder otherwise (admins, the app's own code, shared roots)."""
        owner = confined_user(user) if name in PER_USER_ROOTS else None
        return self._roots[name] if owner is None else self._roots[name] / USERS_FOLDER / owner

    def outputs_for(self, user: User | None) -> Path:
        """Where `user`'s saved generations go: outputs/ for an admin (A1111's layout), their own folder otherwise."""
        return self.root_for(OUTPUTS, user)

    def outputs_subfolder(self, user: User | None) -> str:
        """`outputs_for(user)` relative to outputs/ ("" for the whole folder), as a request stores it."""
        relative = self.outputs_for(user).relative_to(self._roots[OUTPUTS]).as_posix()
        return "" if relative == "." else relative

    def saved_outputs(self, subfolder: str) -> Path:
        """The folder a stored `outputs_subfolder` names, checked to lie inside outputs/ (a request is data
        that may come from a stored job or an extension, so its value is not trusted blindly)."""
        folder = self._roots[OUTPUTS] / (subfolder or "")
        if (subfolder or "").startswith("/") or not is_within(folder, self._roots[OUTPUTS]):
            raise PathRefused(f"outputs subfolder {subfolder!r} is not inside {self._display(self._roots[OUTPUTS])}")
        return folder

    def describe(self, use: PathUse, user: User | None = None) -> str:
        """The allowed folders as a user reads them: relative to the data folder where they are inside it."""
        return ", ".join(self._display(self.root_for(name, user)) for name in use.roots)

    def resolve(self, text: str | os.PathLike[str] | None, use: PathUse, user: User | None) -> Path:
        """The real (symlink-free, absolute) path `text` names, if it lies in one of `use`'s roots as
        `user` may see them (`root_for`; None: the app's own code, which sees the whole folders).

        A relative path is taken inside the use's first root. Raises `PathRefused` otherwise, with the
        same message whether or not the path exists. Existence is not checked here.
        """
        if text is not None and not isinstance(text, (str, os.PathLike)):
            raise self._refused(use, repr(text), user)
        typed = str(os.fspath(text)).strip() if text is not None else ""
        if not typed:
            raise PathRefused(f"{use.label}: enter a folder under {self.describe(use, user)}")
        if (_CONTROL.search(typed) or "\\" in typed or typed.startswith("~") or _PERCENT_ENCODED.search(typed)
                or _WINDOWS_DRIVE.match(typed)):
            raise self._refused(use, typed, user)
        roots = [self.root_for(name, user) for name in use.roots]
        candidate = Path(typed)
        if not candidate.is_absolute():
            candidate = roots[0] / candidate
        real = Path(os.path.realpath(candidate))
        for folder in roots:
            root = Path(os.path.realpath(folder))
            if real == root or root in real.parents:
                return real
        raise self._refused(use, typed, user)

    def _refused(self, use: PathUse, typed: str, user: User | None) -> PathRefused:
        shown = typed if len(typed) <= MAX_ECHO else typed[:MAX_ECHO] + "..."
        return PathRefused(f"{use.label} {shown!r} is not allowed: use a folder under {self.describe(use, user)} "
                           f"(a relative name is taken inside {self._display(self.root_for(use.roots[0], user))})")

    def _display(self, folder: Path) -> str:
        try:
            return folder.relative_to(self._data_dir).as_posix() + "/"
        except ValueError:
            return str(folder)
