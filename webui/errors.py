"""Turn engine exceptions into one-line messages a user can act on (never a traceback).

Shared by the UI (gr.Error) and the HTTP API (4xx detail), so it lives outside both.
"""

from __future__ import annotations

from webui.jobs.device_faults import GpuFault
from webui.jobs.errors import JobCancelled, QueueFullError
from webui.jobs.out_of_memory import GpuOutOfMemory
from webui.models.checkpoint_loading import CheckpointLoadError

USER_ERRORS = (ValueError, LookupError, OSError, CheckpointLoadError, QueueFullError, JobCancelled, GpuOutOfMemory,
               GpuFault)


def user_error(error: BaseException) -> str:
    """The message for a failed request; unexpected errors keep their type name for bug reports."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, USER_ERRORS):
        return message
    return f"Generation failed ({type(error).__name__}): {message}"
