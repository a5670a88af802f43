"""Login, session checks and RBAC, with xapi's errors and parameters."""

import hashlib
import hmac
import os
import time

from .api import now
from .errors import ApiError

# What xapi lists as the roles of a permission, in its message, highest first.
ROLE_ORDER = ["pool-admin", "pool-operator", "vm-power-admin", "vm-admin", "vm-operator", "read-only"]


def hash_password(password, salt=None):
    salt = salt or os.urandom(16).hex()
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), 10_000).hex()
    return {"salt": salt, "hash": digest}


class Sessions:
    def __init__(self, server):
        self.server = server
        self.db = server.db

    def login(self, params, local_host, method):
        if not 2 <= len(params) <= 4:
            raise ApiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, "4", str(len(params)))
        uname, pwd = params[0], params[1]
        originator = params[3] if len(params) > 3 else ""
        if not isinstance(uname, str) or not isinstance(pwd, str):
            raise ApiError("FIELD_TYPE_ERROR", "uname")
        master = self.server.master_ref()
        if local_host != master and method == "session.login_with_password":
            # A supporter refuses logins and names the coordinator, which the caller must reach.
            raise ApiError("HOST_IS_SLAVE", self.db.field("host", master, "address"))
        user = self.db.meta["users"].get(uname)
        if user is None or not hmac.compare_digest(hash_password(pwd, user["salt"])["hash"], user["hash"]):
            time.sleep(0.05)  # PAM answers failures after a delay; keep a token one
            raise ApiError("SESSION_AUTHENTICATION_FAILED", uname, "Authentication failure")
        ref = self.server.api.create(
            "session",
            this_host=local_host,
            last_active=now(),
            auth_user_name=uname,
            is_local_superuser=uname == "root",
            originator=originator,
            validation_time=now(),
            rbac_permissions=[],
        )
        self.db.priv(ref)["role"] = user["role"]
        return ref

    def check(self, ref, local_host):
        if not isinstance(ref, str) or not self.db.exists("session", ref):
            raise ApiError("SESSION_INVALID", ref if isinstance(ref, str) else "")
        if local_host != self.server.master_ref() and self.db.field("session", ref, "this_host") != local_host:
            raise ApiError("HOST_IS_SLAVE", self.db.field("host", self.server.master_ref(), "address"))
        return ref

    def role(self, session):
        return self.db.private.get(session, {}).get("role", "read-only")

    def authorize(self, session, permission, roles):
        if (
            permission.startswith("session.")
            or permission.startswith("task.")
            and permission.endswith(("get_record", "get_status"))
        ):
            return
        role = self.role(session)
        if role not in roles:
            allowed = ", ".join(r for r in ROLE_ORDER if r in roles)
            raise ApiError(
                "RBAC_PERMISSION_DENIED",
                permission.lower(),
                f"No permission in user session. (Roles with this permission: {allowed})",
            )

    def logout(self, ref):
        if self.db.exists("session", ref):
            self.server.api.destroy("session", ref)
