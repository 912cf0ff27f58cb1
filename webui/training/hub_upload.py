"""Share a training run's output folder on the Hugging Face Hub.

One call creates the model repo if needed (private by default: a user's face or product LoRA should
not become public by accident) and uploads the folder in one commit. Every way this can fail (no
token, a malformed repo id, a rejected token, no network) becomes a :class:`HubUploadError` whose
message says what to do, so the Train tab can show it as is. Nothing is sent unless the server was
started with `--allow-hub` (`webui.security.network.NetworkPolicy`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from webui.security.network import NetworkPolicy

HUB_TOKEN_PAGE = "https://huggingface.co/settings/tokens"


class HubUploadError(ValueError):
    """The folder could not be uploaded; the message is meant for the user."""


class HubApi(Protocol):
    """The two calls of ``huggingface_hub.HfApi`` this module uses (tests pass a recording fake)."""

    def create_repo(self, repo_id: str, *, token: str | None = ..., private: bool | None = ...,
                    repo_type: str | None = ..., exist_ok: bool = ...) -> Any: ...

    def upload_folder(self, *, repo_id: str, folder_path: str | Path, commit_message: str | None = ...,
                      token: str | None = ..., repo_type: str | None = ...) -> Any: ...


def _check_repo_id(repo_id: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    repo_id = (repo_id or "").strip()
    if repo_id.count("/") != 1:
        raise HubUploadError(f"repo id {repo_id!r} must be 'username/model-name' (or 'organization/model-name')")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubUploadError(f"repo id {repo_id!r} is not valid on the Hub: {str(error).splitlines()[0]}") from None
    return repo_id


def _http_status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _describe_failure(error: BaseException, repo_id: str) -> str:
    status = _http_status(error)
    if status == 401:
        return f"the Hub rejected the token (401); create a token with write access at {HUB_TOKEN_PAGE}"
    if status == 403:
        return (f"the token may not write to {repo_id!r} (403): use a token with write access, and a namespace "
                "(your user name or an organization you belong to) it is allowed to write to")
    if status is not None:
        return f"the Hub answered {status}: {str(error).splitlines()[0][:300]}"
    detail = str(error).splitlines()[0][:200] if str(error) else "no details"
    return (f"cannot reach the Hugging Face Hub ({type(error).__name__}: {detail}); check the network "
            "connection, and that HF_HUB_OFFLINE is not set")


def check_upload_allowed(network: NetworkPolicy) -> None:
    """`HubDisabled` unless the owner allowed the Hub: callers check before preparing an upload, too."""
    network.require_hub("uploading to the Hugging Face Hub",
                        "copy the exported folder (training/exports) yourself, or restart the server with the flag")


def upload_to_hub(folder: Path, repo_id: str, token: str | None, *, network: NetworkPolicy, private: bool = True,
                  api: HubApi | None = None) -> str:
    """Create ``repo_id`` (if it does not exist) and upload every file of ``folder``; return the repo URL.

    Refused with `HubDisabled` before anything else when ``network`` does not allow the Hub.
    """
    check_upload_allowed(network)
    folder = Path(folder)
    if not token or not token.strip():
        raise HubUploadError(f"no Hugging Face token: create one with write access at {HUB_TOKEN_PAGE} "
                             "and enter it to upload")
    repo_id = _check_repo_id(repo_id)
    if not folder.is_dir():
        raise HubUploadError(f"nothing to upload: {folder} is not a folder")
    if not any(path.is_file() for path in folder.rglob("*")):
        raise HubUploadError(f"nothing to upload: {folder} is empty")
    from huggingface_hub.errors import HTTPError as HubHttpError

    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        final_repo_id = getattr(repo_url, "repo_id", None) or repo_id
        api.upload_folder(repo_id=final_repo_id, folder_path=str(folder), token=token, repo_type="model",
                          commit_message=f"Upload {folder.name} from SD Studio")
    except (HubHttpError, OSError) as error:  # HubHttpError: the Hub client's HTTP and network errors
        raise HubUploadError(f"upload of {folder.name} to {repo_id} failed: {_describe_failure(error, repo_id)}") from error
    return str(repo_url)
