"""A backup job's settings, validated once, with XO's names and defaults (xo-backups.md §3)."""

from __future__ import annotations

from ._retention import RetentionError, long_term_retention_tags
from ._xo_checksum import CHOICES as CHECKSUMS
from ._xo_checksum import choose_algorithm
from ._xo_layout import job_id_from_name, schedule_id_from_name

MODES = ("full", "incremental")
COMPRESSIONS = {"none": None, "gzip": "gzip", "zstd": "zstd"}
LTR_KINDS = ("daily", "weekly", "monthly", "yearly")


class JobSpecError(ValueError):
    """A job option has a value the engine cannot run with; the message says what to change."""


def argument_spec():
    return {
        "job": {"type": "str", "required": True},
        "job_id": {"type": "str"},
        "schedule": {"type": "str", "default": "default"},
        "mode": {"type": "str", "choices": list(MODES), "default": "incremental"},
        "retention": {"type": "int", "default": 7},
        "long_term_retention": {
            "type": "dict",
            "options": {
                "daily": {"type": "int"},
                "weekly": {"type": "int"},
                "monthly": {"type": "int"},
                "yearly": {"type": "int"},
                "timezone": {"type": "str", "default": "UTC"},
            },
        },
        "full_interval": {"type": "int", "default": 0},
        "compression": {"type": "str", "choices": list(COMPRESSIONS), "default": "zstd"},
        "checksum": {"type": "str", "choices": list(CHECKSUMS), "default": "auto"},
        "concurrency": {"type": "int", "default": 2},
        "vm_timeout": {"type": "int", "default": 0},
        "snapshot_retention": {"type": "int", "default": 0},
        "max_merged_per_run": {"type": "int", "default": 0},
        "health_check": {
            "type": "dict",
            "options": {
                "sr": {"type": "str", "required": True},
                "timeout": {"type": "int", "default": 600},
                "wait_xenstore": {"type": "bool"},
            },
        },
    }


class JobSpec:
    def __init__(self, params):
        self.name = params["job"].strip()
        if not self.name:
            raise JobSpecError("job must name the backup job, e.g. job: nightly")
        self.job_id = (params.get("job_id") or "").strip() or job_id_from_name(self.name)
        self.schedule_name = (params.get("schedule") or "default").strip()
        # A schedule given as a UUID is XO's schedule id (for jobs migrated from XO); else derive one.
        self.schedule_id = (
            self.schedule_name
            if _is_uuid(self.schedule_name)
            else schedule_id_from_name(self.job_id, self.schedule_name)
        )
        self.mode = params.get("mode", "incremental")
        self.xo_mode = "full" if self.mode == "full" else "delta"
        self.retention = _at_least(params, "retention", 1, "keep at least the backup being written")
        self.full_interval = _at_least(params, "full_interval", 0, "0 means never force a full")
        self.concurrency = _at_least(params, "concurrency", 0, "0 means every VM at once")
        self.timeout = _at_least(params, "vm_timeout", 0, "seconds per VM; 0 means no limit")
        self.snapshot_retention = _at_least(params, "snapshot_retention", 0, "snapshots kept on the pool")
        self.max_merged = _at_least(params, "max_merged_per_run", 0, "0 means no limit")
        self.compression = COMPRESSIONS[params.get("compression") or "zstd"]
        self.checksum = choose_algorithm(params.get("checksum") or "auto")
        self.long_term_retention, self.timezone = _ltr(params.get("long_term_retention"))
        self.health_check = params.get("health_check")
        if self.health_check is not None:
            if not (self.health_check.get("sr") or "").strip():
                raise JobSpecError("health_check.sr must name the SR (name or uuid) to restore the check VM to")
            if self.health_check.get("timeout", 600) < 1:
                raise JobSpecError("health_check.timeout must be at least 1 second")

    def ltr_tags(self, when):
        if not self.long_term_retention:
            return []
        return long_term_retention_tags(when, self.timezone, self.long_term_retention)

    @property
    def task_timeout(self):
        """Seconds an XAPI task of this job may take (a day when the job sets no per-VM limit)."""
        return self.timeout or 24 * 3600


def _is_uuid(text):
    import uuid  # noqa: PLC0415

    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


def _at_least(params, key, low, meaning):
    value = params.get(key)
    if value is None or value < low:
        raise JobSpecError(f"{key} must be a whole number ≥ {low} ({meaning}); got {value!r}")
    return value


def _ltr(value):
    if not value:
        return None, "UTC"
    timezone = value.get("timezone") or "UTC"
    rules = {}
    for kind in LTR_KINDS:
        count = value.get(kind)
        if count is None or count == 0:
            continue
        if count < 0:
            raise JobSpecError(f"long_term_retention.{kind} must be ≥ 0, got {count}")
        rules[kind] = {"retention": count}
    try:
        long_term_retention_tags(0, timezone, rules or None)
    except (RetentionError, ValueError) as e:
        raise JobSpecError(f"long_term_retention: {e}") from None
    return rules or None, timezone
