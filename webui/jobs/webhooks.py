"""Job webhooks: when a job that named a URL ends, POST its outcome there (signed when a secret is set).

A webhook is an outbound request the server makes on a client's say-so, so it is off unless the owner
starts the server with `--allow-webhooks` (otherwise a client could make the server probe its own
network: SSRF). Only http(s) URLs are taken. The URL is stored with the job, so a job queued before a
restart still calls it. Delivery runs on its own thread with a timeout and one retry; its outcome is
written to the job's record. A failing webhook never changes the job's own state.

The body is JSON: {"id", "kind", "state", "owner", "result", "error", "finished_at"}. With a secret,
the header `X-SDStudio-Signature: sha256=<hex HMAC-SHA256 of the body>` lets the receiver check it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from webui.jobs.scheduler import Scheduler

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-SDStudio-Signature"
MAX_URL_LENGTH = 2000


class WebhookRefused(ValueError):
    """A webhook URL the server will not call (webhooks off, not http(s), malformed)."""


class WebhookSender:
    """Watches a scheduler's finished jobs and calls their webhooks."""

    def __init__(self, scheduler: Scheduler, allowed: bool, secret: bytes | None = None,
                 timeout_s: float = 10.0, attempts: int = 2):
        self._scheduler = scheduler
        self.allowed = allowed
        self._secret = secret
        self._timeout = timeout_s
        self._attempts = attempts
        scheduler.add_finish_listener(self._job_finished)

    def check_url(self, url: str) -> str:
        """The URL to store with a job; WebhookRefused with the reason otherwise."""
        if not self.allowed:
            raise WebhookRefused("webhooks are off on this server (the owner can start it with --allow-webhooks)")
        url = (url or "").strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_LENGTH:
            raise WebhookRefused(f"webhook must be an http:// or https:// URL with a host, got {url[:100]!r}")
        return url

    def _job_finished(self, job_id: str) -> None:
        record = self._scheduler.record(job_id)
        if record is None or not record.webhook or not record.webhook.get("url"):
            return
        body = json.dumps({"id": record.job_id, "kind": record.kind, "state": record.state, "owner": record.owner,
                           "result": record.result, "error": record.error,
                           "finished_at": record.finished_at}).encode()
        threading.Thread(target=self._deliver, args=(job_id, record.webhook["url"], body),
                         name=f"webhook-{job_id[:8]}", daemon=True).start()

    def _deliver(self, job_id: str, url: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "SD-Studio-webhook"}
        if self._secret:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers[SIGNATURE_HEADER] = f"sha256={digest}"
        problem = ""
        for _ in range(self._attempts):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self._timeout) as answer:  # noqa: S310 (checked scheme)
                    status = f"delivered: HTTP {answer.status}"
                    break
            except urllib.error.HTTPError as error:
                problem = f"HTTP {error.code}"
            except (urllib.error.URLError, OSError, ValueError) as error:
                problem = str(getattr(error, "reason", error))
        else:
            status = f"failed after {self._attempts} attempts: {problem}"
            log.warning("webhook of job %s to %s %s", job_id, urlsplit(url).hostname, status)
        self._scheduler.record_webhook_status(job_id, status)


def read_webhook_secret(text: str | None) -> bytes | None:
    """The signing secret from the environment/file value; None when unset."""
    return text.strip().encode() if text and text.strip() else None
