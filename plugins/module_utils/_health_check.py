"""Prove a backup boots: restore it without network, start it, wait for its guest, then destroy it.

This is Xen Orchestra's backup health check (xo-backups.md §3): the restored VM is tagged
``xo:no-bak=Health Check`` (so no backup job picks it up), has no VIF, and must reach ``Running`` and
report its PV drivers through the guest metrics within the timeout. When asked, or when the VM carries
the tag ``xo-backup-health-check-xenstore`` (XO's rule), the check also waits for the guest's own script
to write ``vm-data/xo-backup-health-check`` = ``success`` or ``failure`` in xenstore (XO first sets it to
``planned``; a failure may explain itself in ``vm-data/xo-backup-health-check-error``). The VM and its
disks are destroyed whatever the outcome.

:func:`health_check` never raises for a failed check or a failed restore: it returns a dict whose
``status`` is ``success`` or ``failure`` with a one-sentence ``message``, so a backup run can record it.
"""

from __future__ import annotations

import time

from ._restore import destroy_vm, power_on_call, restore_backup
from ._restore_errors import RestoreError
from ._restore_select import load_backup
from ._xapi_errors import XapiError
from ._xapi_tasks import run_async
from ._xo_layout import format_filename_date

HEALTH_CHECK_TAG = "xo:no-bak=Health Check"
XENSTORE_TAG = "xo-backup-health-check-xenstore"
XENSTORE_KEY = "vm-data/xo-backup-health-check"
XENSTORE_ERROR_KEY = "vm-data/xo-backup-health-check-error"
DEFAULT_TIMEOUT = 600  # XO's healthCheckTimeout: 10 minutes
FIRST_POLL = 0.2
MAX_POLL = 5.0


class HealthCheckFailed(Exception):
    """The restored VM did not prove healthy; the message says which step did not happen."""


class _Clock:
    """Time left of the check's budget, which starts when the VM is started (as in XO)."""

    def __init__(self, timeout, clock=time.monotonic):
        self.timeout = timeout
        self.clock = clock
        self.start = clock()

    @property
    def elapsed(self):
        return self.clock() - self.start

    @property
    def left(self):
        return self.timeout - self.elapsed


def _wait(clock, probe, what):
    """Poll ``probe()`` with backoff until it returns a value other than None, within the budget."""
    delay = FIRST_POLL
    while True:
        value = probe()
        if value is not None:
            return value
        if clock.left <= 0:
            raise HealthCheckFailed(f"{what} within {clock.timeout:g} seconds")
        time.sleep(max(min(delay, clock.left), 0.01))
        delay = min(delay * 1.5, MAX_POLL)


def _guest_ready(client, vm_ref):
    gm = client.call("VM.get_guest_metrics", vm_ref)
    if not gm or gm == "OpaqueRef:NULL":
        return None
    try:
        rec = client.call("VM_guest_metrics.get_record", gm)
    except XapiError as e:
        if e.code == "HANDLE_INVALID":  # replaced between the two calls
            return None
        raise
    detected = rec.get("PV_drivers_detected") is True or bool((rec.get("PV_drivers_version") or {}).get("major"))
    return rec if detected else None


def health_check(client, storage, backup_id, sr_ref, timeout=DEFAULT_TIMEOUT, wait_xenstore=None, *,
                 remote_label=None, name=None):  # fmt: skip
    """Restore ``backup_id`` from ``storage`` to SR ``sr_ref``, boot it, judge it, destroy it.

    ``timeout`` (seconds) bounds the start and the waits, not the restore itself (as in XO).
    ``wait_xenstore``: ``True`` waits for the guest script's verdict in xenstore, ``False`` does not,
    ``None`` waits when the VM carries the tag ``xo-backup-health-check-xenstore``. Returns a dict:
    ``status`` (``success``/``failure``), ``message``, ``backup_id``, ``vm_name``, ``restored_vm_uuid``,
    ``waited_for_xenstore``, ``xenstore`` (the verdict read, if any), ``durations`` per step (seconds),
    ``cleaned_up`` (false when the VM could not be destroyed: ``message`` then says so).
    """
    result = {
        "status": "failure",
        "message": "",
        "backup_id": backup_id,
        "vm_name": None,
        "restored_vm_uuid": None,
        "waited_for_xenstore": False,
        "xenstore": None,
        "durations": {},
        "cleaned_up": True,
    }
    durations = result["durations"]
    vm_ref = None
    started = time.monotonic()
    try:
        if timeout is None or timeout <= 0:
            raise RestoreError(f"the health check timeout must be a positive number of seconds, not {timeout}")
        backup = load_backup(storage, backup_id)
        result["backup_id"] = backup.id
        result["vm_name"] = backup.vm_name
        label = name or f"{backup.vm_name} health check ({format_filename_date(backup.timestamp)})"
        outcome = restore_backup(
            client, storage, backup, sr=sr_ref, name=label, tags=[HEALTH_CHECK_TAG], allow_duplicate=True,
            no_network=True, remote_label=remote_label,
        )  # fmt: skip
        vm_ref = outcome.vm_ref
        result["restored_vm_uuid"] = outcome.vm["uuid"]
        durations["restore"] = round(time.monotonic() - started, 3)
        record = client.call("VM.get_record", vm_ref)
        if wait_xenstore is None:
            wait_xenstore = XENSTORE_TAG in (record.get("tags") or [])
        result["waited_for_xenstore"] = bool(wait_xenstore)
        if wait_xenstore:
            data = dict(record.get("xenstore_data") or {})
            data.pop(XENSTORE_ERROR_KEY, None)
            data[XENSTORE_KEY] = "planned"
            client.call("VM.set_xenstore_data", vm_ref, data)
        clock = _Clock(timeout)
        try:
            call = power_on_call(client, vm_ref)
            if call == "VM.resume" and wait_xenstore:
                # Restored with its memory: resumed, the guest would not boot, so its boot-time script
                # would never report. Boot it afresh instead.
                client.call("VM.hard_shutdown", vm_ref)
                call = "VM.start"
            run_async(client, call, vm_ref, False, False, timeout=max(clock.left, 1))
        except XapiError as e:
            raise HealthCheckFailed(f"the restored VM did not start ({e})") from None
        _wait(clock, lambda: True if client.call("VM.get_power_state", vm_ref) == "Running" else None,
              "the restored VM did not reach the Running state")  # fmt: skip
        durations["start"] = round(clock.elapsed, 3)
        _wait(
            clock,
            lambda: _guest_ready(client, vm_ref),
            "the restored VM started but its guest never reported PV drivers (guest metrics); the backup may "
            "not boot, or its guest tools do not run,",
        )
        durations["guest_metrics"] = round(clock.elapsed, 3)
        if wait_xenstore:

            def verdict():
                value = (client.call("VM.get_xenstore_data", vm_ref) or {}).get(XENSTORE_KEY)
                return value if value in ("success", "failure") else None

            value = _wait(
                clock, verdict, f"the guest's health check script did not write success or failure to {XENSTORE_KEY}"
            )
            result["xenstore"] = value
            durations["xenstore"] = round(clock.elapsed, 3)
            if value != "success":
                why = (client.call("VM.get_xenstore_data", vm_ref) or {}).get(XENSTORE_ERROR_KEY)
                raise HealthCheckFailed(f"the guest's health check script reported failure{f' ({why})' if why else ''}")
        result["status"] = "success"
        script = " and its health check script reported success" if wait_xenstore else ""
        result["message"] = (
            f"Backup {backup.id} of {backup.vm_name!r} is healthy: restored, started and its guest reported PV "
            f"drivers after {durations['guest_metrics']:g} seconds{script}."
        )
    except HealthCheckFailed as e:
        result["message"] = f"Health check of backup {result['backup_id']} failed: {e}."
    except (RestoreError, XapiError) as e:
        text = str(e).rstrip(".")
        result["message"] = f"Health check of backup {result['backup_id']} failed: {text}."
    finally:
        if vm_ref is not None:
            try:
                problems = destroy_vm(client, vm_ref)
            except XapiError as e:
                problems = [str(e)]
            if problems:
                result["cleaned_up"] = False
                result["status"] = "failure"
                result["message"] += (
                    f" The health check VM {result['restored_vm_uuid']} could not be removed: "
                    f"{'; '.join(problems)}; remove it by hand."
                )
        durations["total"] = round(time.monotonic() - started, 3)
    return result
