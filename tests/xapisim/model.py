"""The datamodel: classes, field types and defaults, messages, read from ``datamodel.json``."""

import json
import re
import xmlrpc.client
from functools import cached_property
from pathlib import Path

NULL_REF = "OpaqueRef:NULL"
EPOCH = "19700101T00:00:00Z"
_MAP = re.compile(r"^\((.+) -> (.+)\) map$")


class XDate(str):
    """A datetime kept in xapi's wire text form (``%Y%m%dT%H:%M:%SZ``) so it encodes as dateTime."""


class Type:
    """One datamodel type string, e.g. ``VM ref set`` or ``(string -> enum vm_operations) map``."""

    def __init__(self, text):
        self.text = text
        m = _MAP.match(text)
        self.key = self.value = self.item = None
        if m:
            self.kind = "map"
            self.key, self.value = Type(m.group(1)), Type(m.group(2))
        elif text.endswith(" set"):
            self.kind = "set"
            self.item = Type(text[:-4])
        elif text.endswith(" ref"):
            self.kind = "ref"
            self.cls = text[:-4]
        elif text.endswith(" record") or text.endswith(" record option"):
            self.kind = "record"
            self.cls = text.split(" ")[0]
        elif text.startswith("enum "):
            self.kind = "enum"
            self.enum = text[5:]
        elif text.endswith(" option"):
            self.kind = Type(text[:-7]).kind
        else:
            self.kind = text  # string, int, float, bool, datetime, void

    def empty(self, enums):
        return {
            "map": {},
            "set": [],
            "ref": NULL_REF,
            "record": {},
            "int": 0,
            "float": 0.0,
            "bool": False,
            "datetime": XDate(EPOCH),
            "enum": (enums.get(getattr(self, "enum", ""), [""]) or [""])[0],
        }.get(self.kind, "")

    def parse_default(self, text, enums):
        """Turn the datamodel's default text into a value (``{}``, ``"()"``, ``0.``, ``Null``…)."""
        if text is None:
            return self.empty(enums)
        if self.kind == "string":
            return text[1:-1] if text.startswith('"') else text
        if self.kind == "ref":
            return NULL_REF
        if self.kind == "bool":
            return text == "true"
        if self.kind == "int":
            return int(text)
        if self.kind == "float":
            return float(text)
        if self.kind == "datetime":
            return XDate(text)
        if self.kind == "set":
            inner = text.strip("{}").strip()
            return [self.item.parse_default(x.strip(), enums) for x in inner.split(",")] if inner else []
        if self.kind == "map":
            inner = text.strip("{}").strip()
            out = {}
            for pair in filter(None, (p.strip() for p in inner.split(","))):
                k, v = (s.strip() for s in pair.split("->"))
                out[self.key.parse_default(k, enums)] = self.value.parse_default(v, enums)
            return out
        return text

    def coerce(self, value, enums, where):
        """Convert an incoming XML-RPC argument to the internal value, as xapi's unmarshaller does."""
        from .errors import ApiError  # noqa: PLC0415 - avoid an import cycle at module load

        k = self.kind
        try:
            if k == "int":
                if isinstance(value, bool):
                    raise ValueError
                return int(value)  # xapi accepts <int> or a decimal string
            if k == "float":
                return float(value)
            if k == "bool":
                if isinstance(value, bool):
                    return value
                if isinstance(value, str) and value.lower() in ("true", "false"):
                    return value.lower() == "true"
                raise ValueError
            if k == "datetime":
                if isinstance(value, xmlrpc.client.DateTime):
                    return XDate(value.value if value.value.endswith("Z") else value.value + "Z")
                return XDate(str(value))
            if k in ("string", "ref"):
                if not isinstance(value, str):
                    raise ValueError
                return value
            if k == "enum":
                allowed = enums.get(self.enum)
                if not isinstance(value, str):
                    raise ValueError
                for a in allowed or [value]:
                    if a.lower() == value.lower():
                        return a
                raise ApiError("ENUM_VALUE_NOT_SUPPORTED", value, self.enum)  # noqa: TRY301
            if k == "set":
                if not isinstance(value, list):
                    raise ValueError
                return [self.item.coerce(v, enums, where) for v in value]
            if k == "map":
                if not isinstance(value, dict):
                    raise ValueError
                return {
                    self.key.coerce(kk, enums, where): self.value.coerce(v, enums, where) for kk, v in value.items()
                }
        except (TypeError, ValueError):
            raise ApiError("FIELD_TYPE_ERROR", where) from None
        return value


class Field:
    def __init__(self, name, type_text, qualifier, default):
        self.name = name
        self.type = Type(type_text)
        self.qualifier = qualifier
        self.default_text = default

    @property
    def writable(self):
        return self.qualifier == "RW"


class Message:
    def __init__(self, cls, name, spec):
        self.cls = cls
        self.name = name
        self.params = [(n, Type(t)) for n, t in spec["params"]]
        self.session = spec["session"]
        self.result = Type(spec["result"])
        self.roles = spec["roles"]
        self.implicit = spec["implicit"]

    @property
    def wire_name(self):
        return f"{self.cls}.{self.name}"

    @property
    def permission(self):
        return f"{self.cls}.{self.name}".lower()


class Datamodel:
    def __init__(self, path=None):
        data = json.loads(Path(path or Path(__file__).with_name("datamodel.json")).read_text())
        self.enums = data["enums"]
        self.classes = {}
        self.messages = {}
        for cname, c in data["classes"].items():
            self.classes[cname] = {f[0]: Field(*f) for f in c["fields"]}
            for mname, spec in c["messages"].items():
                self.messages[f"{cname}.{mname}"] = Message(cname, mname, spec)
        # The lower-case index lets "vm.get_all" resolve as xapi's case-insensitive dispatch does.
        self.class_by_lower = {c.lower(): c for c in self.classes}

    @cached_property
    def async_able(self):
        """Messages with an ``Async.`` form: everything but accessors and session/task/event calls."""
        out = set()
        for key, m in self.messages.items():
            if m.implicit and not m.name.startswith(("create", "destroy")):
                continue
            if m.cls in ("session", "task", "event"):
                continue
            out.add(key)
        return out

    def new_record(self, cls, **values):
        rec = {}
        for name, f in self.classes[cls].items():
            rec[name] = f.type.parse_default(f.default_text, self.enums)
        rec.update(values)
        return rec

    def revive(self, cls, record):
        """Restore value types lost in JSON (datetimes) after loading persisted state."""
        for name, f in self.classes[cls].items():
            if f.type.kind == "datetime" and name in record:
                record[name] = XDate(record[name])
        return record
