"""Start and stop an appliance, and wait for its guest to report an address."""

from __future__ import annotations

import time

from ._appliance_vm import VmState
from ._xapi_errors import XapiError
from ._xapi_tasks import run_async

CLEAN_SHUTDOWN_TIMEOUT = 120
POWER_TIMEOUT = 600
FIRST_POLL, MAX_POLL = 1.0, 5.0


class IpWaitError(XapiError):
    """The guest did not report the expected address in time."""


def start(client, ref):
    run_async(client, "VM.start", ref, False, False, timeout=POWER_TIMEOUT)


def stop(client, ref, power_state):
    """Shut down cleanly, or hard when the guest cannot (no PV drivers, hung, paused or suspended)."""
    if power_state == "Running":
        try:
            run_async(client, "VM.clean_shutdown", ref, timeout=CLEAN_SHUTDOWN_TIMEOUT)
            return "clean"
        except XapiError:
            if client.call("VM.get_power_state", ref) == "Halted":
                return "clean"
    run_async(client, "VM.hard_shutdown", ref, timeout=POWER_TIMEOUT)
    return "hard"


def wait_for_ip(client, ref, expected, timeout, clock=time.monotonic, sleep=time.sleep):
    """Poll the guest metrics until interface 0 reports ``expected`` (any IPv4 address when ``None``)."""
    deadline = clock() + timeout
    delay = FIRST_POLL
    while True:
        state = VmState(client, ref)
        ip, networks, has_metrics = state.guest_ip()
        if ip and (expected is None or ip == expected):
            return ip, networks
        if state.power_state != "Running":
            raise IpWaitError(
                f"VM {state.rec['name_label']!r} is {state.power_state.lower()} while waiting for its address: the "
                "guest shut itself down or crashed during boot; check its console."
            )
        remaining = deadline - clock()
        if remaining <= 0:
            raise IpWaitError(_never_reported(state, expected, timeout, ip, networks, has_metrics))
        sleep(min(delay, remaining))
        delay = min(delay * 1.5, MAX_POLL)


def _never_reported(state, expected, timeout, ip, networks, has_metrics):
    name = state.rec["name_label"]
    wanted = f"the address {expected}" if expected else "an address"
    if not has_metrics:
        said = (
            "it reported nothing at all (no guest metrics): the guest agent (xe-guest-utilities or "
            "xen-guest-agent) is not running, or the VM did not boot; check its console"
        )
    elif not networks:
        said = "its guest agent runs but reported no network address: the interface did not come up"
    else:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(networks.items()))
        said = f"its guest agent reported {shown}"
        if expected and ip and ip != expected:
            said += (
                f"; it took {ip} instead of {expected}, so the image did not apply the configuration (does it read a "
                "cloud-init NoCloud drive or the xenstore vm-data keys?)"
            )
    return f"VM {name!r} did not report {wanted} on its first interface within {timeout} seconds: {said}."
