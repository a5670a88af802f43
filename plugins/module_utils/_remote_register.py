"""What the ``remote`` module does: register or unregister a remote on this host, mount NFS, probe it."""

from __future__ import annotations

import contextlib
import os
import subprocess

from . import _remote_probe as probe
from . import _remote_registry as registry
from ._remote_options import RemoteTarget, storage_options
from ._remote_url import parse
from ._storage import StorageError
from ._storage_nfs import DEFAULT_MOUNTS_DIR, is_mounted, mount_options_for, mount_point_for

UMOUNT_TIMEOUT = 60
MAX_BENCHMARK_MIB = 4096


class RemoteRegistration:
    def __init__(self, params, check_mode=False, redact=str):
        self.params = params
        self.check_mode = check_mode
        self.redact = redact
        self.name = params["name"]
        self.path = registry.record_path(params["remotes_dir"], self.name)
        if not 1 <= params["benchmark_size"] <= MAX_BENCHMARK_MIB:
            raise registry.RegistryError(
                f"benchmark_size={params['benchmark_size']} is out of range: give 1 to {MAX_BENCHMARK_MIB} (MiB)."
            )
        self.actions = []

    # -- NFS mount ------------------------------------------------------------------------------
    @staticmethod
    def mount_point(record):
        """The mount point a registered NFS record uses (``None`` for other kinds or unreadable records)."""
        if not record or "unreadable" in record:
            return None
        try:
            url = parse(record.get("url", ""))
        except ValueError:
            return None
        if url.type != "nfs":
            return None
        mounts_dir = record.get("mounts_dir") or DEFAULT_MOUNTS_DIR
        return mount_point_for(url, mounts_dir, mount_options_for(url, record.get("options")))

    def _target(self, remote, record):
        """The remote as the backup modules open it by name (``_remote_options.remote_target``)."""
        return RemoteTarget(remote, self.name, storage_options(record))

    def _mount(self, remote, record):
        storage = self._target(remote, record).open()
        storage.close()  # persistent: the mount stays

    def _unmount(self, mount_point):
        done = subprocess.run(
            ["umount", mount_point],
            capture_output=True,
            text=True,
            timeout=UMOUNT_TIMEOUT,
            check=False,
            env=dict(os.environ, LANG="C", LC_ALL="C"),
        )
        if done.returncode != 0 and is_mounted(mount_point):
            said = " ".join(done.stderr.split()) or "(nothing)"
            raise registry.RegistryError(
                f"cannot unmount {mount_point} of remote {self.name!r}: umount said {said}. A backup or restore may "
                "be using it; run again when it has finished. The registration is kept."
            )
        # Only the empty mount point and its lock file go: rmdir never removes data.
        with contextlib.suppress(OSError):
            os.rmdir(mount_point)
        with contextlib.suppress(OSError):
            os.unlink(mount_point + ".lock")

    # -- states ---------------------------------------------------------------------------------
    def present(self):
        p = self.params
        desired, remote = registry.desired_record(
            p["url"],
            p.get("username"),
            p.get("password"),
            p.get("options"),
            p["store_credentials"],
            p["mounts_dir"],
        )
        current = registry.read(self.path)
        fstate = registry.file_state(self.path)
        record_changed = current != desired
        wrong_file = fstate is not None and (
            fstate["mode"] != f"{registry.FILE_MODE:04o}" or (os.geteuid() == 0 and fstate["owner_uid"] != 0)
        )
        if current is None:
            self.actions.append("register")
        elif record_changed:
            self.actions.append("update registration")
        elif wrong_file:
            self.actions.append(f"fix registration file mode ({fstate['mode']} -> 0600, owner root)")
        new_mp = self.mount_point(desired)
        old_mp = self.mount_point(current)
        unmount_old = old_mp is not None and old_mp != new_mp and is_mounted(old_mp)
        if unmount_old:
            self.actions.append(f"unmount {old_mp}")
        need_mount = new_mp is not None and not is_mounted(new_mp)
        if need_mount:
            self.actions.append(f"mount {remote.redacted()} on {new_mp}")
        before = self._shown(current, old_mp)
        after = self._shown(desired, new_mp, will_mount=new_mp is not None)
        if current and desired.get("password") and current.get("password") not in (None, desired["password"]):
            after["password"] = registry.SECRET_SHOWN + " (changed)"
        result = {"changed": bool(self.actions), "diff": {"before": before, "after": after}}
        if not self.check_mode:
            if unmount_old:
                self._unmount(old_mp)
            if record_changed or wrong_file:
                registry.write(self.path, desired)
            if need_mount:
                self._mount(remote, desired)
        result["remote"] = {**after, "registered": not self.check_mode or current is not None}
        self._probe(result, remote, desired)
        return result

    def _shown(self, record, mount_point, will_mount=False):
        shown = registry.describe(record, self.name, self.path)
        if shown and mount_point is not None:
            shown["mount_point"] = mount_point
            shown["mounted"] = True if will_mount else is_mounted(mount_point)
        return shown

    def _probe(self, result, remote, record):
        p = self.params
        if not (p["test"] or p["benchmark"]):
            return
        if self.check_mode:
            skipped = {"skipped": True, "reason": "check mode writes nothing to the remote"}
            if p["test"]:
                result["test"] = skipped
            if p["benchmark"]:
                result["benchmark"] = skipped
            return
        try:
            storage = self._target(remote, record).open()
        except StorageError as e:
            if not p["test"]:
                raise
            result["test"] = {"success": False, "step": "open", "error": self.redact(str(e)), "duration": 0.0}
            return
        with storage:
            if p["test"]:
                result["test"] = probe.test(storage, self.redact)
            if p["benchmark"] and result.get("test", {}).get("success", True):
                result["benchmark"] = probe.benchmark(storage, p["benchmark_size"])

    def absent(self):
        current = registry.read(self.path)
        mp = self.mount_point(current)
        mounted = mp is not None and is_mounted(mp)
        if current is not None:
            self.actions.append("unregister")
        if mounted:
            self.actions.insert(0, f"unmount {mp}")
        before = self._shown(current, mp)
        result = {"changed": bool(self.actions), "diff": {"before": before, "after": {}}}
        if not self.check_mode:
            if mounted:
                self._unmount(mp)
            registry.remove(self.path)
        result["remote"] = {"name": self.name, "path": self.path, "registered": bool(self.check_mode and current)}
        return result

    def run(self):
        result = self.present() if self.params["state"] == "present" else self.absent()
        result["actions"] = self.actions
        return result
