"""Retention over synthetic histories: counts, schedules, long-term buckets, DST and New Year."""

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from ansible_collections.xapi.proxy.plugins.module_utils._retention import (
    RetentionError,
    get_old_entries,
    long_term_retention_tags,
    newest_first,
    period_label,
    select_old_backups,
)

PARIS = ZoneInfo("Europe/Paris")


@dataclass(frozen=True)
class B:
    timestamp: int
    mode: str = "delta"
    schedule_id: str = "daily"
    name: str = ""


def ms(dt):
    return int(dt.timestamp() * 1000)


def local(*args, tz=PARIS):
    return ms(datetime(*args, tzinfo=tz))


def utc(*args):
    return ms(datetime(*args, tzinfo=timezone.utc))


def entries(*stamps):
    return [B(ts, name=str(i)) for i, ts in enumerate(stamps)]


def names(items):
    return [b.name for b in items]


def test_keeps_newest_n():
    history = entries(*range(1000, 11000, 1000))  # 10 runs
    assert names(get_old_entries(3, history)) == [str(i) for i in range(7)]
    assert get_old_entries(10, history) == [] and get_old_entries(50, history) == []
    assert get_old_entries(0, history) == history
    assert get_old_entries(2, []) == []
    dicts = [{"timestamp": t} for t in (1, 2, 3)]
    assert get_old_entries(1, dicts) == dicts[:2]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: get_old_entries(-1, []), "retention must be a whole number"),
        (lambda: get_old_entries(True, []), "retention must be a whole number"),
        (lambda: get_old_entries(1, entries(2, 1)), "sorted by strictly increasing timestamp"),
        (lambda: get_old_entries(1, entries(1, 1)), "sorted by strictly increasing timestamp"),
        (
            lambda: get_old_entries(1, entries(1), long_term_retention={"daily": {"retention": 2}}),
            "needs the job's timezone",
        ),
        (
            lambda: get_old_entries(
                1, entries(1), long_term_retention={"daily": {"retention": 2}}, timezone="Mars/Base"
            ),
            "unknown timezone 'Mars/Base'",
        ),
        (
            lambda: get_old_entries(1, entries(1), long_term_retention={"hourly": {"retention": 2}}, timezone="UTC"),
            "unknown long-term retention kind 'hourly'",
        ),  # fmt: skip
        (
            lambda: get_old_entries(1, entries(1), long_term_retention={"daily": {"retention": -1}}, timezone="UTC"),
            "daily retention must be a whole number",
        ),  # fmt: skip
        (
            lambda: get_old_entries(1, [{"x": 1}], long_term_retention={"daily": 1}, timezone="UTC"),
            "needs a timestamp on every backup",
        ),  # fmt: skip
    ],
)
def test_invalid_settings(call, message):
    with pytest.raises(RetentionError, match=message):
        call()


def test_daily_buckets_are_local_days_across_dst():
    # 00:30 in Paris is the previous day in UTC; DST starts on 2024-03-31 (CET -> CEST).
    e = entries(
        local(2024, 3, 30, 0, 30),  # 0: 03-29 23:30Z
        local(2024, 3, 30, 23, 30),  # 1: 03-30 22:30Z
        local(2024, 3, 31, 0, 30),  # 2: 03-30 23:30Z, the night of the change
        local(2024, 4, 1, 0, 30),  # 3: 03-31 22:30Z (CEST)
        local(2024, 4, 2, 0, 30),  # 4: 04-01 22:30Z
    )
    ltr = {"daily": {"retention": 4}}
    # Paris days 04-02, 04-01, 03-31 and 03-30 (newest of that day: #1)
    assert names(get_old_entries(0, e, long_term_retention=ltr, timezone="Europe/Paris")) == ["0"]
    # the same history bucketed in UTC keeps other backups: the timezone matters
    assert names(get_old_entries(0, e, long_term_retention=ltr, timezone="UTC")) == ["1"]
    assert [period_label("daily", b.timestamp, "Europe/Paris") for b in e] == [
        "2024-03-30", "2024-03-30", "2024-03-31", "2024-04-01", "2024-04-02"
    ]  # fmt: skip


def test_repeated_hour_when_dst_ends_is_one_day():
    # 02:30 happens twice on 2024-10-27 in Paris: 00:30Z (CEST) and 01:30Z (CET)
    e = entries(utc(2024, 10, 26, 0, 30), utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 1, 30))
    assert {period_label("daily", b.timestamp, "Europe/Paris") for b in e[1:]} == {"2024-10-27"}
    kept = set(e) - set(get_old_entries(0, e, long_term_retention={"daily": 5}, timezone="Europe/Paris"))
    assert names(sorted(kept, key=lambda b: b.timestamp)) == ["0", "2"]  # the newest run of 10-27


def test_empty_periods_do_not_count_and_newest_of_a_period_is_kept():
    e = entries(
        utc(2024, 6, 1, 1), utc(2024, 6, 2, 1), utc(2024, 6, 2, 13),  # two runs on 06-02
        utc(2024, 6, 5, 1), utc(2024, 6, 9, 1), utc(2024, 6, 9, 2),
    )  # fmt: skip
    old = get_old_entries(0, e, long_term_retention={"daily": {"retention": 3}}, timezone="UTC")
    # the 3 most recent days *with backups* are 06-09, 06-05, 06-02 (gaps extend how far back we go)
    assert names(old) == ["0", "1", "4"]


def test_year_boundary_and_iso_weeks():
    assert period_label("weekly", utc(2024, 12, 29, 12), "UTC") == "2024-52"  # Sunday
    assert period_label("weekly", utc(2024, 12, 30, 12), "UTC") == "2025-01"  # Monday: ISO week 1 of 2025
    assert period_label("weekly", utc(2026, 1, 1, 12), "UTC") == "2026-01"
    assert period_label("weekly", utc(2027, 1, 1, 12), "UTC") == "2026-53"
    assert period_label("yearly", utc(2024, 12, 31, 23, 30), "Europe/Paris") == "2025"  # already 2025 in Paris
    e = entries(*(utc(2024, 12, 20) + i * 86_400_000 for i in range(20)))  # 12-20 .. 2025-01-08
    ltr = {"weekly": {"retention": 2}, "yearly": {"retention": 2}}
    kept = [b for b in e if b not in get_old_entries(1, e, long_term_retention=ltr, timezone="UTC")]
    stamps = [datetime.fromtimestamp(b.timestamp / 1000, timezone.utc).date().isoformat() for b in kept]
    # weekly: newest of ISO weeks 2025-02 and 2025-01 (01-08, 01-05); yearly: newest of 2025 and 2024 (12-31)
    assert stamps == ["2024-12-31", "2025-01-05", "2025-01-08"]


def test_period_settings_shift_the_start():
    ts = utc(2024, 6, 18, 3, 30)
    assert period_label("daily", ts, "UTC", {"firstHourOfTheDay": 4}) == "2024-06-17"
    assert period_label("weekly", utc(2024, 6, 17, 12), "UTC", {"firstDayOfWeek": 1}) == "2024-24"
    assert period_label("monthly", utc(2024, 6, 1, 12), "UTC", {"firstDayOfMonth": 1}) == "2024-05"
    assert period_label("yearly", utc(2024, 1, 1, 12), "UTC", {"firstDayOfYear": 1}) == "2023"


def test_long_term_tags():
    ltr = {"yearly": {"retention": 1}, "daily": {"retention": 7}, "weekly": {"retention": 4}, "monthly": 3}
    assert long_term_retention_tags(utc(2024, 6, 18, 2, 0, 3), "Europe/Paris", ltr) == [
        "daily=2024-06-18", "weekly=2024-25", "monthly=2024-06", "yearly=2024"
    ]  # fmt: skip
    assert long_term_retention_tags(utc(2024, 12, 31, 23, 30), "Europe/Paris", ltr) == [
        "daily=2025-01-01", "weekly=2025-01", "monthly=2025-01", "yearly=2025"
    ]  # fmt: skip
    assert long_term_retention_tags(utc(2024, 12, 31, 23, 30), "UTC", ltr) == [
        "daily=2024-12-31", "weekly=2025-01", "monthly=2024-12", "yearly=2024"
    ]  # fmt: skip
    assert long_term_retention_tags(utc(2024, 6, 18), "UTC", {"daily": {"retention": 0}}) == []
    assert long_term_retention_tags(utc(2024, 6, 18), None, None) == []


def _history():
    """~3.5 months around New Year: a daily delta schedule in Paris (00:30 local, i.e. 23:30Z or 22:30Z),
    a weekly full schedule, and a second delta schedule that must never be touched."""
    out = []
    day = datetime(2024, 10, 20, 0, 30, tzinfo=PARIS)
    while day < datetime(2025, 2, 5, tzinfo=PARIS):
        out.append(B(ms(day), "delta", "daily", day.strftime("%F")))
        if day.weekday() == 6:
            out.append(B(ms(day + timedelta(hours=1)), "full", "weekly", "full " + day.strftime("%F")))
            out.append(B(ms(day + timedelta(hours=2)), "delta", "other", "other " + day.strftime("%F")))
        day += timedelta(days=1)
    return out


def _oracle(backups, keep_last, ltr, tz):
    """Independent model: group by period, newest per group, most recent N groups."""
    zone = ZoneInfo(tz)
    kept = set(backups[-keep_last:]) if keep_last else set()
    fmt = {"daily": "%Y-%m-%d", "weekly": "%G-%V", "monthly": "%Y-%m", "yearly": "%Y"}
    for kind, count in ltr.items():
        groups = {}
        for b in backups:
            groups.setdefault(datetime.fromtimestamp(b.timestamp / 1000, zone).strftime(fmt[kind]), []).append(b)
        for label in sorted(groups)[-count:]:
            kept.add(max(groups[label], key=lambda b: b.timestamp))
    return [b for b in backups if b not in kept]


def test_synthetic_history_with_several_schedules():
    history = _history()
    assert len(history) > 100
    ltr = {
        "daily": {"retention": 10},
        "weekly": {"retention": 6},
        "monthly": {"retention": 3},
        "yearly": {"retention": 2},
    }
    old = select_old_backups(history, mode="delta", schedule_id="daily", retention=7,
                             long_term_retention=ltr, timezone="Europe/Paris")  # fmt: skip
    daily = [b for b in history if b.schedule_id == "daily"]
    expected = _oracle(daily, 6, {k: v["retention"] for k, v in ltr.items()}, "Europe/Paris")
    assert old == expected
    kept = [b.name for b in daily if b not in old]
    # 6 newest + 10 last days (01-26..02-04); ISO weeks W06..W01: 02-04, 02-02, 01-26, 01-19, 01-12, 01-05;
    # months: 02-04, 01-31, 12-31; years: 02-04 and 12-31 (the last run that is still 2024 in Paris)
    assert kept == ["2024-12-31", "2025-01-05", "2025-01-12", "2025-01-19", "2025-01-26", "2025-01-27",
                    "2025-01-28", "2025-01-29", "2025-01-30", "2025-01-31", "2025-02-01", "2025-02-02",
                    "2025-02-03", "2025-02-04"]  # fmt: skip
    # Bucketed in UTC the same runs (23:30Z the day before) give other keepers: 2025-01-01 00:30 Paris is
    # 2024-12-31 23:30Z, so it would stand for 2024 and December.
    in_utc = select_old_backups(history, mode="delta", schedule_id="daily", retention=7,
                                long_term_retention=ltr, timezone="UTC")  # fmt: skip
    assert "2025-01-01" in [b.name for b in daily if b not in in_utc] and "2025-01-01" not in kept
    assert all(b.schedule_id == "daily" and b.mode == "delta" for b in old)


def test_only_same_mode_and_schedule_compete():
    history = _history()
    old_full = select_old_backups(history, mode="full", schedule_id="weekly", retention=4)
    fulls = [b for b in history if b.mode == "full"]
    assert old_full == fulls[:-3]  # 3 kept + the one about to be written = 4
    assert select_old_backups(history, mode="full", schedule_id="daily", retention=1) == []
    after = select_old_backups(history, mode="full", schedule_id="weekly", retention=4, before_new_backup=False)
    assert after == fulls[:-4]
    with pytest.raises(RetentionError, match="export retention must be at least 1"):
        select_old_backups(history, mode="delta", schedule_id="daily", retention=0)


def test_deletions_per_run_are_capped_oldest_first():
    history = entries(*range(1, 21))
    old = select_old_backups(history, mode="delta", schedule_id="daily", retention=5, max_deleted=2)
    assert names(old) == ["0", "1"]  # the rest goes in later runs
    assert names(newest_first(old)) == ["1", "0"]  # XO deletes newest to oldest


def test_metadata_dicts_are_accepted():
    md = [{"timestamp": t, "mode": "delta", "scheduleId": "s"} for t in (3, 1, 2)]
    assert select_old_backups(md, mode="delta", schedule_id="s", retention=2) == [md[1], md[2]]
