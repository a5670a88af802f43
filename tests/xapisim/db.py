"""The object database: records keyed by class and ``OpaqueRef``, persisted under ``--state``."""

import json
import os
import threading
import uuid as uuidlib
from pathlib import Path

from .errors import ApiError, handle_invalid
from .model import NULL_REF


def new_ref():
    return "OpaqueRef:" + str(uuidlib.uuid4())


class Database:
    def __init__(self, model, state_dir):
        self.model = model
        self.path = Path(state_dir) / "db.json"
        self.lock = threading.RLock()
        self.tables = {c: {} for c in model.classes}
        self.owner = {}  # ref -> class, so a ref of the wrong class is HANDLE_INVALID
        self.by_uuid = {c: {} for c in model.classes}
        self.private = {}  # ref -> simulator-only state (storage node, boot secrets...)
        self.meta = {}  # simulator-wide settings from the lab (passwords, DHCP pool...)
        self.dirty = False
        self.flush_lock = threading.Lock()

    # -- persistence ----------------------------------------------------------------------------
    def load(self):
        if not self.path.exists():
            return False
        data = json.loads(self.path.read_text())
        for cls, rows in data["tables"].items():
            for ref, rec in rows.items():
                self._index(cls, ref, self.model.revive(cls, rec))
        self.private = data["private"]
        self.meta = data["meta"]
        return True

    def flush(self):
        # Writers are serialised so that an older snapshot never replaces a newer one.
        with self.flush_lock:
            with self.lock:
                if not self.dirty:
                    return
                payload = json.dumps({"tables": self.tables, "private": self.private, "meta": self.meta})
                self.dirty = False
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as fh:
                fh.write(payload)
            os.replace(tmp, self.path)

    # -- records --------------------------------------------------------------------------------
    def _index(self, cls, ref, rec):
        self.tables[cls][ref] = rec
        self.owner[ref] = cls
        if "uuid" in rec:
            self.by_uuid[cls][rec["uuid"]] = ref

    def create(self, cls, ref=None, **values):
        with self.lock:
            ref = ref or new_ref()
            values.setdefault("uuid", str(uuidlib.uuid4()))
            rec = self.model.new_record(cls, **values)
            self._index(cls, ref, rec)
            self.dirty = True
            return ref

    def destroy(self, cls, ref):
        with self.lock:
            rec = self.get(cls, ref)
            del self.tables[cls][ref]
            self.owner.pop(ref, None)
            self.by_uuid[cls].pop(rec.get("uuid"), None)
            self.private.pop(ref, None)
            self.dirty = True

    def exists(self, cls, ref):
        return ref in self.tables.get(cls, {})

    def get(self, cls, ref):
        rec = self.tables[cls].get(ref)
        if rec is None:
            raise handle_invalid(cls, ref)
        return rec

    def field(self, cls, ref, name):
        return self.get(cls, ref)[name]

    def set(self, cls, ref, **values):
        with self.lock:
            self.get(cls, ref).update(values)
            self.dirty = True

    def add_to(self, cls, ref, field, item):
        """Append to a set field (idempotent, as xapi's set semantics are)."""
        with self.lock:
            if ref == NULL_REF or not self.exists(cls, ref):
                return
            lst = self.get(cls, ref)[field]
            if item not in lst:
                lst.append(item)
                self.dirty = True

    def remove_from(self, cls, ref, field, item):
        with self.lock:
            if ref == NULL_REF or not self.exists(cls, ref):
                return
            lst = self.get(cls, ref)[field]
            if item in lst:
                lst.remove(item)
                self.dirty = True

    def by_uuid_ref(self, cls, value):
        ref = self.by_uuid[cls].get(value)
        if ref is None:
            raise ApiError("UUID_INVALID", cls, value)
        return ref

    def all(self, cls):
        return list(self.tables[cls].items())

    def find(self, cls, **match):
        return [r for r, rec in self.tables[cls].items() if all(rec.get(k) == v for k, v in match.items())]

    def priv(self, ref):
        with self.lock:
            self.dirty = True
            return self.private.setdefault(ref, {})

    def touch(self):
        self.dirty = True
