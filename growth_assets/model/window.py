"""The lookback window of spec §1: ISO weeks starting Monday, in UTC."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

from .contract import ContractError


# The weekly run: Monday at this time (UTC), for the week that just closed. The weekly
# partitions, the schedule and the demo's default week all follow it.
RUN_TIME_UTC = time(4, 30)


def latest_run_as_of(now: datetime | None = None) -> date:
    """The ``as_of`` of the latest weekly run that is due by ``now`` (default: now, UTC): today,
    except on a Monday before RUN_TIME_UTC, which still belongs to the week before (its
    partition does not exist until the run's time). A naive ``now`` is UTC, as ``monday_of``
    reads it (astimezone took it as the machine's local time)."""
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    shift = timedelta(hours=RUN_TIME_UTC.hour, minutes=RUN_TIME_UTC.minute)
    return (now.astimezone(timezone.utc) - shift).date()


def monday_of(d: date | datetime) -> date:
    if isinstance(d, datetime):
        d = d.astimezone(timezone.utc).date() if d.tzinfo else d.date()
    return d - timedelta(days=d.weekday())


@dataclass(frozen=True)
class Window:
    """The ``lookback_weeks`` complete ISO weeks before the week of ``as_of`` (UTC)."""

    as_of: date
    lookback_weeks: int

    @property
    def week_start(self) -> date:
        """The Monday of ``as_of``: the ``weekly_kpi`` week that receives P."""
        return monday_of(self.as_of)

    @property
    def start(self) -> date:
        return self.week_start - timedelta(weeks=self.lookback_weeks)

    @property
    def end(self) -> date:
        """Exclusive: the Monday of ``as_of``."""
        return self.week_start

    @property
    def last_week(self) -> date:
        return self.week_start - timedelta(weeks=1)

    def week_monday(self, week_index: int) -> date:
        return self.start + timedelta(weeks=week_index)

    @classmethod
    def for_partition(cls, partition_key: str, lookback_weeks: int) -> "Window":
        """A weekly partition is keyed by the last complete week of its window."""
        try:
            last = date.fromisoformat(partition_key)
        except ValueError:
            raise ContractError("partition_key", "must be an ISO date (a Monday)", partition_key) from None
        if last.isoweekday() != 1:
            raise ContractError("partition_key", "must be a Monday", partition_key)
        return cls(as_of=last + timedelta(weeks=1), lookback_weeks=lookback_weeks)
