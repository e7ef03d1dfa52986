"""Builders shared by the metrics tests: runs, thetas and weekly_kpi rows in a real database."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from psycopg.types.json import Jsonb

from dataclasses import replace

import numpy as np

from growth_assets.db.writers import jsonable, write_fit, write_run_record
from growth_assets_tests.support.results import make_result

WINDOW_START = date(2026, 8, 31)  # 12 weeks before 2026-11-23
WEEK = date(2026, 11, 23)  # the run's weekly_kpi week
H = 15
P_WEEK = WINDOW_START + timedelta(weeks=H)  # 2026-12-14


def store_run(conn, run_id="native-20261123-043000", *, status="passed", n_students=3,
              fitted_at=datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc), target=0.0,
              h=H, window_start=WINDOW_START, summary_means=None, drop=()):
    """A make_result run (students s00000..), stored as the graph stores it (its fit, then
    its growth_brms_meta record), fitted_at set."""
    res = store_fit(conn, make_result(n_students, run_id=run_id, h=h, target=target), status=status,
                    window_start=window_start, summary_means=summary_means, drop=drop)
    conn.execute("UPDATE growth_brms_meta SET fitted_at = %s WHERE run_id = %s", (fitted_at, run_id))
    conn.commit()
    return res


def store_fit(conn, res, *, status="passed", window_start=WINDOW_START, summary_means=None, drop=(),
              week_start=WEEK, score_source="theta", window_sums=None):
    if summary_means:
        summary = dict(res.summary)
        for k, v in summary_means.items():
            summary[k] = replace(summary[k], mean=float(v))
        res = replace(res, summary=summary)
    if drop:
        keep = np.flatnonzero(~np.isin(res.students.student_id.astype(str), list(drop)))
        res = replace(res, students=res.students.take(keep))
    write_fit(conn, res, window_sums=window_sums)
    write_run_record(conn, jsonable(res.header_json()), status=status, window_start=window_start,
                     window_end=week_start, week_start=week_start, score_source=score_source)
    return res


def add_theta(conn, user, theta, se, fitted_at):
    conn.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                 " VALUES (%s, %s, %s, 'm', 'v', %s)", (user, theta, se, fitted_at))
    conn.commit()


def set_kpis(conn, user, week, kpis):
    conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES (%s, %s, %s)"
                 " ON CONFLICT (user_id, week_start) DO UPDATE SET kpis = EXCLUDED.kpis",
                 (user, week, Jsonb(kpis)))
    conn.commit()


def kpis(conn, user, week=WEEK):
    row = conn.execute("SELECT kpis FROM weekly_kpi WHERE user_id=%s AND week_start=%s",
                       (user, week)).fetchone()
    return None if row is None else row[0]


def stored_p(p=0.42, target=0.0, run_id="native-20261123-043000", source="native", sigma=0.3):
    return {"P": p, "sigma": sigma, "P_target": target, "P_week": P_WEEK.isoformat(),
            "P_run_id": run_id, "P_source": source}
