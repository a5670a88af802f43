"""Wait for XAPI tasks (``Async.*`` calls, HTTP transfers) with a finite timeout and backoff.

xapi stores a task's result as XML-RPC text (``<value>OpaqueRef:…</value>``, an ``<array>`` of
refs, or ``<value></value>`` for void); :func:`parse_task_result` turns it back into Python.
"""

from __future__ import annotations

import contextlib
import random
import time
import xmlrpc.client  # noqa: S411 - decoding a result string produced by the XAPI server we are logged into
from xml.parsers.expat import ExpatError

from ._xapi_errors import XapiError, XapiTaskError, describe_call, describe_failure

FIRST_POLL = 0.2
MAX_POLL = 5.0
BACKOFF = 1.5


def parse_task_result(text):
    """``"<value>OpaqueRef:x</value>"`` → ``"OpaqueRef:x"``; an array → list; void or empty → ``None``."""
    text = (text or "").strip()
    if not text:
        return None
    if not text.startswith("<"):
        return text  # some xapi versions store a bare ref
    try:
        (value,), _ = xmlrpc.client.loads(
            f"<?xml version='1.0'?><methodResponse><params><param>{text}</param></params></methodResponse>"
        )
    except (ExpatError, ValueError, TypeError) as e:
        raise XapiTaskError(f"XAPI returned a task result that is not XML-RPC ({e}): {text[:200]!r}") from None
    return None if value == "" else value


def wait_for_task(client, task, timeout, action="XAPI task", on_progress=None, destroy=True, sr=None):
    """Poll ``task`` until it ends; return its parsed result or raise :class:`XapiTaskError`.

    ``action`` names the operation in messages ("VM.snapshot on VM 'web-01'"). ``on_progress`` is
    called with the progress (0.0–1.0) after each poll. On timeout the task is cancelled; it is
    destroyed in every case unless ``destroy`` is false.
    """
    deadline = time.monotonic() + timeout
    delay = FIRST_POLL
    progress = 0.0
    try:
        while True:
            record = client.call("task.get_record", task)
            status = record.get("status")
            if status == "success":
                return parse_task_result(record.get("result"))
            # "cancelling" is not an end state: the task's owner has yet to stop the work.
            if status in ("failure", "cancelled"):
                details = list(record.get("error_info") or ["TASK_CANCELLED" if status == "cancelled" else "UNKNOWN"])
                text = describe_failure(details, action, client.options.username, client.url, client.name_of, sr=sr)
                raise client.failure(text, details, XapiTaskError)
            with contextlib.suppress(TypeError, ValueError):
                progress = float(record.get("progress") or 0.0)
            if on_progress is not None:
                on_progress(progress)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _cancel(client, task)
                raise XapiTaskError(
                    f"{action} did not finish within {timeout:g} seconds ({progress:.0%} done) and was cancelled. "
                    "Raise the timeout if the pool is busy, or check the host's task list (xe task-list)."
                )
            # Backoff with a little jitter so parallel pollers do not beat in step.
            time.sleep(min(remaining, delay * random.uniform(0.9, 1.1)))  # noqa: S311 - not cryptographic
            delay = min(delay * BACKOFF, MAX_POLL)
    finally:
        if destroy:
            with contextlib.suppress(XapiError):
                client.call("task.destroy", task)


def _cancel(client, task):
    # A task that cannot be cancelled (no "cancel" in allowed_operations) is destroyed anyway.
    with contextlib.suppress(XapiError):
        client.call("task.cancel", task)


def run_async(client, method, *args, timeout, on_progress=None, sr=None):
    """Call ``Async.<method>`` and wait for it; returns the parsed task result."""
    task = client.call("Async." + method, *args, sr=sr)
    action = describe_call(method, args, client.name_of)
    return wait_for_task(client, task, timeout, action=action, on_progress=on_progress, sr=sr)
