import time
from datetime import date, datetime, timezone

from growth_assets.model.window import latest_run_as_of, monday_of


def test_a_naive_now_is_utc_whatever_the_machines_time_zone(monkeypatch):
    """latest_run_as_of took a naive datetime as the machine's local time (astimezone), while
    monday_of takes it as UTC: in New York, Monday 03:00 (naive, meant as UTC) gave Sunday's
    as_of for the aware instant but another day for the naive one."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        naive, aware = datetime(2026, 11, 23, 5), datetime(2026, 11, 23, 5, tzinfo=timezone.utc)
        assert latest_run_as_of(naive) == latest_run_as_of(aware) == date(2026, 11, 23)
        assert latest_run_as_of(datetime(2026, 11, 23, 3)) == date(2026, 11, 22)  # before 04:30 UTC
        assert monday_of(naive) == monday_of(aware) == date(2026, 11, 23)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
