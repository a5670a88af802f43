"""The ``restore`` module's options (documented in ``plugins/modules/restore.py``) and what it runs.

:func:`argument_spec` is merged with the connection and remote options by the module;
:class:`RestoreRequest` validates what Ansible's type checks cannot (dates, maps, tags) before any
login, and :meth:`RestoreRequest.run` does the work and returns the module result.
"""

from __future__ import annotations

from ._health_check import DEFAULT_TIMEOUT, health_check
from ._remote_options import remote_target
from ._restore import restore_backup
from ._restore_errors import RestoreError, RestoreInputError
from ._restore_plan import PoolView, plan_restore
from ._restore_select import parse_at, select_backup
from ._storage import StorageError
from ._xo_listing import encrypted_remote_message, remote_encryption


def argument_spec():
    """The module's own options (a fresh dict)."""
    return {
        "remote": {"type": "str", "required": True},
        "backup": {"type": "str"},
        "vm": {"type": "str"},
        "at": {"type": "str"},
        "sr": {"type": "str", "required": True},
        "disk_srs": {"type": "dict"},
        "name": {"type": "str"},
        "new_mac_addresses": {"type": "bool", "default": False},
        "network_map": {"type": "dict"},
        "start": {"type": "bool", "default": False},
        "tags": {"type": "list", "elements": "str", "default": []},
        "force": {"type": "bool", "default": False},
        "health_check": {
            "type": "dict",
            "options": {
                "sr": {"type": "str"},
                "timeout": {"type": "int", "default": DEFAULT_TIMEOUT},
                "wait_xenstore": {"type": "bool"},
            },
        },
    }


MUTUALLY_EXCLUSIVE = [["backup", "vm"], ["backup", "at"], ["health_check", "start"]]
REQUIRED_ONE_OF = [["backup", "vm"]]


def _name_map(value, option):
    """A ``{str: str or None}`` map from a dict option; ``""`` means None (leave out)."""
    out = {}
    for key, target in (value or {}).items():
        if target is not None and not isinstance(target, str):
            raise RestoreInputError(
                f"{option}[{key}] must be a name or UUID (a string), or null to leave it out, not {target!r}."
            )
        out[str(key)] = (target.strip() or None) if isinstance(target, str) else None
    return out


class RestoreRequest:
    """Validated options of one module run."""

    def __init__(self, params):
        self.params = params
        self.backup_id = params.get("backup")
        self.vm = params.get("vm")
        if self.vm is not None and not self.vm.strip():
            raise RestoreInputError("vm must name a VM (its UUID or its name as backed up).")
        self.at = parse_at(params.get("at"))
        self.sr = (params.get("sr") or "").strip()
        if not self.sr:
            raise RestoreInputError("sr must name the SR to restore to (its name or UUID).")
        self.disk_srs = _name_map(params.get("disk_srs"), "disk_srs")
        self.network_map = _name_map(params.get("network_map"), "network_map")
        self.name = params.get("name")
        if self.name is not None and not self.name.strip():
            raise RestoreInputError("name must not be empty (leave it out for Xen Orchestra's '<name> (<date>)').")
        self.tags = list(params.get("tags") or [])
        for tag in self.tags:
            if not tag.strip():
                raise RestoreInputError("tags must not contain an empty tag.")
        self.health = params.get("health_check")
        if self.health is not None:
            if self.health.get("timeout") is None or self.health["timeout"] <= 0:
                raise RestoreInputError(
                    f"health_check.timeout must be a positive number of seconds, not {self.health.get('timeout')}."
                )
            if self.health.get("sr") is not None and not self.health["sr"].strip():
                raise RestoreInputError("health_check.sr must name an SR, or be left out to use sr.")

    # -- remote ---------------------------------------------------------------------------------
    def open_remote(self, add_secret):
        """Open the remote; ``add_secret`` receives every password it carries (to mask in output).

        A registered remote opens as its registration says (a registered NFS remote on its mount).
        """
        target = remote_target(self.params["remote"], self.params)
        return target.open(add_secret, failure=RestoreInputError), target.label

    # -- run -------------------------------------------------------------------------------------
    def run(self, client, storage, remote_label, check_mode=False, warn=None):
        """Restore (or health-check) the selected backup; returns ``(result dict, failure message or None)``."""
        try:
            algorithm = remote_encryption(storage)
            if algorithm is not None:
                raise RestoreInputError(encrypted_remote_message(storage, algorithm))
            backup = select_backup(storage, self.backup_id, self.vm, self.at, warn)
        except StorageError as e:
            raise RestoreError(f"Cannot read the remote {storage.display}: {e}") from None
        if self.health is not None:
            return self._health_check(client, storage, backup, remote_label, check_mode)
        outcome = restore_backup(
            client,
            storage,
            backup,
            sr=self.sr,
            name=self.name,
            disk_srs=self.disk_srs,
            network_map=self.network_map,
            new_mac_addresses=self.params.get("new_mac_addresses", False),
            start=self.params.get("start", False),
            tags=self.tags,
            force=self.params.get("force", False),
            check_mode=check_mode,
            remote_label=remote_label,
            warn=warn,
        )
        result = outcome.to_dict()
        if outcome.changed and outcome.plan is not None:
            plan = result["plan"]
            result["diff"] = {
                "before": {},
                "after": {
                    "vm": plan["vm"]["name_label"],
                    "sr": plan["sr"],
                    "disks": plan["disks"],
                    "vifs": plan["vifs"],
                },  # fmt: skip
            }
        return result, None

    def _health_check(self, client, storage, backup, remote_label, check_mode):
        sr = self.health.get("sr") or self.sr
        if check_mode:
            plan = plan_restore(client, storage, backup, sr=sr, name=self.name, no_network=True)
            try:
                summary = plan.to_dict()
            finally:
                plan.close()
            out = {
                "changed": False,
                "backup": {
                    "id": backup.id,
                    "vm_uuid": backup.vm_uuid,
                    "vm_name": backup.vm_name,
                    "timestamp": backup.timestamp,
                    "date": backup.date,
                    "mode": backup.mode,
                    "size": backup.size,
                },  # fmt: skip
                "plan": summary,
                "health_check": {"status": "skipped", "message": "Check mode: the health check was not run."},
            }
            return out, None
        option = "health_check.sr" if self.health.get("sr") else "sr"
        sr_ref = PoolView(client).sr(sr, option)[0]
        result = health_check(
            client, storage, backup.id, sr_ref, self.health["timeout"], self.health.get("wait_xenstore"),
            remote_label=remote_label, name=self.name,
        )  # fmt: skip
        out = {
            "changed": False,
            "backup": {
                "id": backup.id,
                "vm_uuid": backup.vm_uuid,
                "vm_name": backup.vm_name,
                "timestamp": backup.timestamp,
                "date": backup.date,
                "mode": backup.mode,
                "size": backup.size,
            },  # fmt: skip
            "health_check": result,
        }
        return out, (None if result["status"] == "success" else result["message"])
