"""Which backups to keep: XO's ``getOldEntries`` semantics, plus the long-term-retention tags.

Rules (xo-backups.md §2 "Retention and merge"), and the choices made where the reference is silent:

* Only backups of the same mode **and** the same schedule compete (:func:`select_old_backups`); when a
  new backup is about to be written, ``exportRetention - 1`` existing ones are kept so the total
  stays at ``exportRetention``. At most ``max_deleted`` (``maxMergedDeltasPerRun``) are removed per
  run, the oldest first; the engine deletes them newest to oldest as XO does.
* The newest ``retention`` entries are kept. In addition, for each long-term kind
  (daily/weekly/monthly/yearly, ``{"retention": n, "settings": {...}}``) the ``n`` most recent
  periods *that contain a backup* keep one backup each: empty periods do not count, so a gap extends
  how far back retention reaches (as XO documents).
* Choice: the kept backup of a period is its **newest** one (what an operator expects from "keep one
  per day"). XO's current code ends up keeping the oldest of each period; the difference only shows
  when a schedule runs several times per period.
* Periods are computed in the job's ``timezone`` (required with long-term retention), so a backup at
  23:30 local time on a DST day belongs to that local day. Weeks are ISO weeks (Monday first, week 1
  contains 4 January), written ``%G-%V`` as in XO's tags (``weekly=2024-25``); around New Year the
  week's year may differ from the calendar year (2024-12-30 is in ``2025-01``). XO's moment-based
  code uses the locale's week instead (Sunday first in English), so Sunday backups can fall in a
  different week there.
* Optional settings shift the period start as XO's: ``firstHourOfTheDay`` (daily),
  ``firstDayOfWeek``, ``firstDayOfMonth``, ``firstDayOfYear`` (days to subtract before labelling).
* A kind whose retention is 0 is ignored (not configured); negative or non-integer counts are errors.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

try:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
except ImportError:  # pragma: no cover - Python < 3.9
    ZoneInfo = None
    ZoneInfoNotFoundError = KeyError

from ansible_collections.xapi.proxy.plugins.module_utils._xo_layout import to_datetime

LTR_KINDS = ("daily", "weekly", "monthly", "yearly")
T = TypeVar("T")


class RetentionError(ValueError):
    """Invalid retention settings."""


def _zone(timezone: Optional[str]):
    if not timezone:
        raise RetentionError("long-term retention needs the job's timezone, e.g. timezone: Europe/Paris.")
    if ZoneInfo is None:  # pragma: no cover
        raise RetentionError("long-term retention needs Python 3.9+ (zoneinfo).")
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise RetentionError(f"unknown timezone {timezone!r}: use an IANA name such as Europe/Paris or UTC.") from None


def period_label(kind: str, when, timezone: str, settings: Optional[Mapping[str, Any]] = None) -> str:
    """The bucket of ``when`` (ms or datetime) for ``kind``: ``2024-06-18``, ``2024-25``, ``2024-06``, ``2024``."""
    settings = settings or {}
    local = to_datetime(when).astimezone(_zone(timezone)).replace(tzinfo=None)  # wall-clock arithmetic
    if kind == "daily":
        return (local - timedelta(hours=settings.get("firstHourOfTheDay", 0))).strftime("%Y-%m-%d")
    if kind == "weekly":
        return (local - timedelta(days=settings.get("firstDayOfWeek", 0))).strftime("%G-%V")
    if kind == "monthly":
        return (local - timedelta(days=settings.get("firstDayOfMonth", 0))).strftime("%Y-%m")
    if kind == "yearly":
        return (local - timedelta(days=settings.get("firstDayOfYear", 0))).strftime("%Y")
    raise RetentionError(f"unknown long-term retention kind {kind!r}: use daily, weekly, monthly or yearly.")


def _rules(long_term_retention: Optional[Mapping[str, Any]]) -> Dict[str, tuple]:
    rules = {}
    for kind, rule in (long_term_retention or {}).items():
        if kind not in LTR_KINDS:
            raise RetentionError(f"unknown long-term retention kind {kind!r}: use daily, weekly, monthly or yearly.")
        count = rule.get("retention") if isinstance(rule, Mapping) else rule
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise RetentionError(f"{kind} retention must be a whole number ≥ 0, got {count!r}.")
        if count:
            settings = rule.get("settings") if isinstance(rule, Mapping) else None
            rules[kind] = (count, settings or {})
    return {k: rules[k] for k in LTR_KINDS if k in rules}


def long_term_retention_tags(
    when, timezone: Optional[str], long_term_retention: Optional[Mapping[str, Any]]
) -> List[str]:
    """Tags for a new backup, one per configured kind: ``["daily=2024-06-18", "weekly=2024-25", …]``."""
    rules = _rules(long_term_retention)
    return [f"{kind}={period_label(kind, when, timezone, settings)}" for kind, (_, settings) in rules.items()]


def _timestamp(entry) -> Optional[int]:
    if isinstance(entry, Mapping):
        return entry.get("timestamp")
    return getattr(entry, "timestamp", None)


def get_old_entries(
    retention: int,
    entries: Sequence[T],
    *,
    long_term_retention: Optional[Mapping[str, Any]] = None,
    timezone: Optional[str] = None,
    timestamp_of: Callable[[T], Optional[int]] = _timestamp,
) -> List[T]:
    """Entries (sorted oldest first, timestamps in ms) that retention does not keep, in input order."""
    if isinstance(retention, bool) or not isinstance(retention, int) or retention < 0:
        raise RetentionError(f"retention must be a whole number ≥ 0, got {retention!r}.")
    rules = _rules(long_term_retention)
    if rules:
        _zone(timezone)
    kept = set()
    remaining = {kind: count for kind, (count, _) in rules.items()}
    current = {kind: None for kind in rules}
    previous = None
    for index in range(len(entries) - 1, -1, -1):  # newest first
        entry = entries[index]
        if len(entries) - index <= retention:
            kept.add(index)
        ts = timestamp_of(entry)
        if ts is None:
            if rules:
                raise RetentionError("long-term retention needs a timestamp on every backup.")
            continue
        if previous is not None and ts >= previous:
            raise RetentionError("entries must be sorted by strictly increasing timestamp.")
        previous = ts
        for kind, (_, settings) in rules.items():
            label = period_label(kind, ts, timezone, settings)
            if label != current[kind] and remaining[kind] > 0:
                current[kind] = label
                remaining[kind] -= 1
                kept.add(index)  # first seen going backwards = newest of this period
    return [entry for index, entry in enumerate(entries) if index not in kept]


def select_old_backups(
    backups: Sequence[T],
    *,
    mode: str,
    schedule_id: str,
    retention: int,
    long_term_retention: Optional[Mapping[str, Any]] = None,
    timezone: Optional[str] = None,
    max_deleted: Optional[int] = None,
    before_new_backup: bool = True,
) -> List[T]:
    """Backups of ``mode``/``schedule_id`` to delete, oldest first (XO's writers' ``_prepare``).

    ``backups`` are objects or dicts with ``mode``, ``schedule_id``/``scheduleId`` and ``timestamp``
    (e.g. ``BackupInfo`` or raw metadata). With ``before_new_backup`` (the default), room is left for
    the backup about to be written, so ``retention`` must be ≥ 1.
    """
    keep = retention - 1 if before_new_backup else retention
    if isinstance(retention, bool) or not isinstance(retention, int) or keep < 0:
        raise RetentionError(
            f"export retention must be at least 1 to write a backup, got {retention!r}."
            if before_new_backup
            else f"retention must be a whole number ≥ 0, got {retention!r}."
        )

    def field_of(b, *names):
        for name in names:
            value = b.get(name) if isinstance(b, Mapping) else getattr(b, name, None)
            if value is not None:
                return value
        return None

    same = [
        b for b in backups if field_of(b, "mode") == mode and field_of(b, "schedule_id", "scheduleId") == schedule_id
    ]
    same.sort(key=lambda b: _timestamp(b) or 0)
    old = get_old_entries(keep, same, long_term_retention=long_term_retention, timezone=timezone)
    if max_deleted is not None and len(old) > max_deleted:
        old = old[:max_deleted]  # the rest goes in later runs
    return old


def newest_first(entries: Sequence[T]) -> List[T]:
    """Deletion order XO uses (newest to oldest, to avoid needless merges)."""
    return list(reversed(entries))
