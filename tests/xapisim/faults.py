"""Faults armed through ``POST /_sim/faults`` for the next N matching requests.

``{"path": "/export", "action": "cut", "after_bytes": 1048576, "count": 1}``
``{"method": "VM.snapshot", "action": "fail_task", "error": ["SR_BACKEND_FAILURE_44", "", "…", ""]}``
``{"path": "/export_raw_vdi", "action": "throttle", "rate": 1048576}``
``{"path": "/export", "action": "stall", "after_bytes": 8388608, "seconds": 30}`` (a host that stops
sending but keeps the connection open)
``{"path": "/import", "action": "fail_task", "error": ["VDI_IO_ERROR", "Device I/O errors"]}``

``path`` names an HTTP handler exactly; ``method`` matches ``Async.`` calls by name.
"""

import threading
import time

from .errors import ApiError

ACTIONS = {"cut", "fail_task", "stall", "throttle"}


class CutStream(Exception):
    """Drop the connection, as a crashed or rebooted host would."""


class Fault:
    def __init__(self, spec):
        self.action = spec["action"]
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}; expected one of {sorted(ACTIONS)}")
        self.path = spec.get("path")
        self.method = spec.get("method")
        if not (self.path or self.method):
            raise ValueError("a fault needs a 'path' (HTTP handler) or a 'method' (Async call) to match")
        self.count = int(spec.get("count", 1))
        self.after_bytes = int(spec.get("after_bytes", 0))
        self.rate = float(spec.get("rate", 0))
        self.seconds = float(spec.get("seconds", 30))
        self.error = list(spec.get("error") or ["VDI_IO_ERROR", "Device I/O errors"])
        self.sent = 0
        self.started = None

    def as_error(self):
        return ApiError(self.error[0], *self.error[1:])

    def before_task(self):
        if self.action == "fail_task":
            raise self.as_error()

    def on_bytes(self, n):
        """Called before sending or after receiving ``n`` bytes of a stream."""
        if self.started is None:
            self.started = time.monotonic()
        self.sent += n
        if self.action == "cut" and self.sent > self.after_bytes:
            raise CutStream()
        if self.action == "stall" and self.sent > self.after_bytes and self.seconds:
            time.sleep(self.seconds)
            self.seconds = 0  # once
        if self.action == "throttle" and self.rate > 0:
            ahead = self.sent / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)

    def before_fault(self, n):
        """How many of the next ``n`` bytes go out before a cut or a stall acts on the stream."""
        if self.action == "cut" or (self.action == "stall" and self.seconds):
            return max(0, self.after_bytes - self.sent)
        return n


class Faults:
    def __init__(self):
        self.lock = threading.Lock()
        self.armed = []

    def arm(self, spec):
        fault = Fault(spec)
        with self.lock:
            self.armed.append(fault)
        return fault

    def take(self, kind, name):
        with self.lock:
            for fault in self.armed:
                match = (kind == "http" and fault.path == name) or (
                    kind == "task" and fault.method and name.endswith(fault.method)
                )
                if match:
                    fault.count -= 1
                    if fault.count <= 0:
                        self.armed.remove(fault)
                    return _copy(fault)
        return None

    def clear(self):
        with self.lock:
            self.armed.clear()


def _copy(fault):
    # Each request gets its own byte counters.
    clone = Fault.__new__(Fault)
    clone.__dict__.update(fault.__dict__)
    clone.sent, clone.started = 0, None
    return clone
