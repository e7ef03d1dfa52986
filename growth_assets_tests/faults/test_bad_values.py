"""One user's absurd value stops no one; bad input is refused naming the field and the rows
(issue: nothing silently wrong, items 6, 7, 12 and 13)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from growth_assets.defs.growth.panel import Window, build_panel
from growth_assets.metrics import compute_goal_attainment_probability as compute
from growth_assets.metrics import explain_goal_attainment_probability as explain
from growth_assets.metrics import refresh_active_users
from growth_assets.model.contract import ContractError
from growth_assets.settings import Settings
from growth_assets_tests.metrics.helpers import add_theta, store_run

REPO = Path(__file__).resolve().parents[2]
MONDAY = date(2026, 11, 23)


def theta(conn, user, value, at):
    conn.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                 " VALUES (%s, %s, 0.3, 'm', 'v', %s)", (user, value, at))


def test_one_huge_theta_is_left_out_and_counted_and_the_panel_is_built(conn):
    """Today's main: avg(1e300, 1e300) overflowed, the whole weekly run failed with a raw
    NumericValueOutOfRange naming no user."""
    at = datetime(2026, 11, 17, 10, tzinfo=timezone.utc)
    theta(conn, "huge", 1e300, at)
    theta(conn, "huge", 1e300, datetime(2026, 11, 18, 10, tzinfo=timezone.utc))
    theta(conn, "huge", 0.4, datetime(2026, 11, 10, 10, tzinfo=timezone.utc))
    for u, v in (("a", 0.1), ("b", 0.3)):
        theta(conn, u, v, at)
    conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES ('k', '2026-11-16', '{\"ability_estimate\": 1e400}')")
    conn.commit()
    info = build_panel(conn, Window(MONDAY, 12), "theta", now=datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc))
    assert info.excluded["out_of_range"] == 3  # two thetas of 1e300, one ability_estimate of 1e400
    rows = dict(((u, w), s) for u, w, s in conn.execute(
        "SELECT student_id, week, score FROM growth_panel_rows WHERE panel_id = %s", (info.panel_id,)).fetchall())
    assert rows == {("huge", 10): 0.4, ("a", 11): 0.1, ("b", 11): 0.3}


def test_an_ability_estimate_below_float8s_range_is_zero_not_a_failed_panel(conn):
    """A JSON number can be smaller than any float8 (1e-400): the range check passed it (it is
    within BRMS_SCORE_RANGE) and its cast to float8 then failed the whole weekly panel
    ("out of range for type double precision")."""
    at = datetime(2026, 11, 17, 10, tzinfo=timezone.utc)
    theta(conn, "a", 0.1, at)
    conn.execute("INSERT INTO weekly_kpi (user_id, week_start, kpis) VALUES"
                 " ('tiny', '2026-11-16', '{\"ability_estimate\": 1e-400}'),"
                 " ('tiny-neg', '2026-11-16', '{\"ability_estimate\": -1e-400}')")
    conn.commit()
    info = build_panel(conn, Window(MONDAY, 12), "theta", now=datetime(2026, 11, 23, 4, 30, tzinfo=timezone.utc))
    assert info.excluded["out_of_range"] == 0
    rows = dict(((u, w), s) for u, w, s in conn.execute(
        "SELECT student_id, week, score FROM growth_panel_rows WHERE panel_id = %s", (info.panel_id,)).fetchall())
    assert rows == {("a", 11): 0.1, ("tiny", 11): 0.0, ("tiny-neg", 11): 0.0}


def test_a_stored_number_beyond_float8_is_its_users_problem_only(conn, monkeypatch):
    """weekly_kpi is the platform's table: a P, sigma or P_target that is a JSON number out of
    float8's range (1e400, or 1e-400) made every call and batch that read its row fail, the
    daily refresh of every user with it. Now such a P is not a number within [0, 1] (it falls
    through, said why), such a sigma is no sigma, and a P_target below float8's range is 0."""
    from growth_assets.metrics import compute_goal_attainment_probabilities
    from growth_assets_tests.metrics.helpers import WEEK, set_kpis, stored_p

    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    store_run(conn, n_students=5)
    set_kpis(conn, "s00000", WEEK, stored_p(0.42))
    rows = {"s00001": '{"P": 1e400}', "s00002": '{"sigma": 1e400}', "s00003": '{"P_target": 1e-400}',
            "s00004": '{"P": -1e-400}'}
    for u, change in rows.items():
        set_kpis(conn, u, WEEK, stored_p(0.42))
        conn.execute("UPDATE weekly_kpi SET kpis = kpis || %s::jsonb WHERE user_id = %s", (change, u))
    conn.commit()
    users = [f"s{i:05d}" for i in range(5)]
    out = compute_goal_attainment_probabilities(conn, users, target=0.0)
    assert (out["s00000"].path, out["s00000"].P, out["s00000"].sigma) == ("stored", 0.42, 0.3)
    assert out["s00001"].path == "run"
    # jsonb keeps 1e400 as its 401 digits: the reason shows how long it is, not all of them
    assert "is not a number within [0, 1] ('10000000000000000000...00000000 (401 characters)')" in \
        out["s00001"].reasons[0], out["s00001"].reasons
    assert (out["s00002"].path, out["s00002"].P, out["s00002"].sigma) == ("stored", 0.42, None)
    assert (out["s00003"].path, out["s00003"].P) == ("stored", 0.42)
    assert (out["s00004"].path, out["s00004"].P) == ("stored", 0.0)
    for u in users:
        one = explain(conn, u, target=0.0)
        assert (one.path, one.P, one.sigma, one.reasons) == (out[u].path, out[u].P, out[u].sigma, out[u].reasons), u


def test_a_custom_range_is_a_setting_naming_its_variable():
    assert Settings.from_env({"BRMS_SCORE_RANGE": "100,800"}).score_range == (100.0, 800.0)
    with pytest.raises(ValueError, match="BRMS_SCORE_RANGE='800,100'"):
        Settings.from_env({"BRMS_SCORE_RANGE": "800,100"})


def test_a_huge_theta_of_a_new_user_does_not_stop_the_daily_refresh(conn, monkeypatch):
    monkeypatch.setenv("METRICS_USE_BAYESIAN", "true")
    store_run(conn)
    theta(conn, "new", 1e300, datetime(2026, 11, 24, 10, tzinfo=timezone.utc))
    theta(conn, "new", 1e300, datetime(2026, 11, 24, 11, tzinfo=timezone.utc))
    add_theta(conn, "ok", 0.2, 0.3, datetime(2026, 11, 24, 10, tzinfo=timezone.utc))
    counts = refresh_active_users(conn, MONDAY, target=0.0)
    assert counts["users"] == 2 and counts["written"] >= 1
    assert explain(conn, "new", target=0.0).P is None  # nothing usable: no made-up number


def test_a_future_dated_theta_does_not_win_the_normal_path(conn):
    add_theta(conn, "u", 0.5, 0.2, datetime(2026, 11, 1, tzinfo=timezone.utc))
    add_theta(conn, "u", 9.0, 0.2, datetime(2099, 1, 1, tzinfo=timezone.utc))  # a clock or import bug
    a = explain(conn, "u", target=0.5)
    assert a.path == "normal" and a.mu == 0.5 and a.P == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [True, "0.0", [0.5]])
def test_a_target_must_be_a_number(conn, bad):
    with pytest.raises(ContractError, match="target"):
        compute(conn, "u", target=bad)


def test_the_settings_repr_shows_no_password():
    s = Settings.from_env({"DATABASE_URL": "postgresql://app:s3cret@db:5432/growth",
                           "R_BRMS_INTERNAL_TOKEN": "tok-123"})
    assert "s3cret" not in repr(s) and "tok-123" not in repr(s)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "growth_assets.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600, cwd=REPO)


@pytest.mark.parametrize("content, message", [
    # an absurd score: refused up front, naming the rows, before any sampling
    (b"student_id,week,score\na,0,1\na,1,1e200\nb,0,2\nb,1,3\n", "score: must be within [-1000, 1000] (rows 1)"),
    # ids "NA" and "null" are ids
    (b"student_id,week,score\nNA,0,1\nNA,1,1.5\nnull,0,2\nnull,1,1e200\n", "(rows 3)"),
    (b"student_id,week,score\na,0,1\n\xff,1,2\nb,0,2\n", "--panel: not UTF-8 text (byte 0xff on line 3)"),
    (b"student_id,week,score\na,0,1\na,7,2\nb,0,2\nb,3,1\n", "week: must be < lookback_weeks=2"),
])
def test_fit_refuses_bad_panels_in_one_line(tmp_path, content, message):
    panel = tmp_path / "p.csv"
    panel.write_bytes(content)
    extra = ["--lookback-weeks", "2"] if b"a,7" in content else []
    out = cli("fit", "--engine", "native", "--panel", str(panel), "--out", str(tmp_path / "o.json"), *extra)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "o.json").exists()


def test_fit_reads_na_and_null_as_ids(tmp_path):
    panel = tmp_path / "p.csv"
    panel.write_text("student_id,week,score\nNA,0,1\nNA,1,1.5\nnull,0,2\nnull,1,2.6\nx,0,0.5\n")
    out = cli("fit", "--engine", "native", "--panel", str(panel), "--out", str(tmp_path / "o.json"),
              "--chains", "1", "--samples", "200")
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    ids = [p["student_id"] for p in json.loads((tmp_path / "o.json").read_text())["predictions"]]
    assert ids == ["NA", "null", "x"]


@pytest.mark.parametrize("flag", ["--chains", "--samples"])
def test_fit_refuses_zero_chains_or_samples_instead_of_using_the_default(tmp_path, flag):
    panel = tmp_path / "p.csv"
    panel.write_text("student_id,week,score\na,0,1\na,1,2\nb,0,2\n")
    out = cli("fit", "--engine", "native", "--panel", str(panel), "--out", str(tmp_path / "o.json"), flag, "0")
    assert out.returncode == 2 and f"{flag[2:].replace('samples', 'n_samples').replace('chains', 'n_chains')}: must be within" \
        in out.stderr, out.stderr


def test_fit_with_the_service_down_is_one_line(tmp_path):
    from growth_assets.db.localpg import free_port

    panel = tmp_path / "p.csv"
    panel.write_text("student_id,week,score\na,0,1\na,1,2\nb,0,2\n")
    out = cli("fit", "--engine", "brms", "--panel", str(panel), "--out", str(tmp_path / "o.json"),
              env={"R_BRMS_BASE_URL": f"http://127.0.0.1:{free_port()}", "R_BRMS_TIMEOUT_SECS": "3"})
    last = out.stderr.strip().splitlines()[-1]  # after the retry warnings
    assert out.returncode == 1 and last.startswith("error: brms service: could not connect"), out.stderr
    assert "Traceback" not in out.stderr


def test_fit_with_a_missing_panel_file_is_one_line(tmp_path):
    out = cli("fit", "--engine", "native", "--panel", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.json"))
    assert out.returncode == 2 and out.stderr.strip() == f"error: --panel: no such file (got '{tmp_path / 'nope.csv'}')"


def test_fit_refused_by_the_service_401_is_one_line(tmp_path, fake):
    """A wrong token: the service's own answer, in one line (a fake server: a fault, not the service)."""
    import json

    f = fake((401, json.dumps({"error": "unauthorized", "detail": "bad token"}).encode(), 0))
    panel = tmp_path / "p.csv"
    panel.write_text("student_id,week,score\na,0,1\na,1,2\nb,0,2\n")
    out = cli("fit", "--engine", "brms", "--panel", str(panel), "--out", str(tmp_path / "o.json"),
              env={"R_BRMS_BASE_URL": f.url, "R_BRMS_INTERNAL_TOKEN": "wrong"})
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith("error: brms service answered 401")
    assert "Traceback" not in out.stderr and "wrong" not in out.stderr  # the token is never printed
