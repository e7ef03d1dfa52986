"""The `growth-assets` commands, run as a user runs them (a subprocess of the console script)."""

import json
import re
import os
import shutil
import tempfile
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from growth_assets.db import connect
from growth_assets_tests.support.results import accepted_json, checked_json  # noqa: F401

from growth_assets_tests.conftest import REFERENCE_DIR

CLI = [sys.executable, "-m", "growth_assets.cli"]
REPO = Path(__file__).resolve().parents[1]


def run(args, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(env_extra or {})
    return subprocess.run(CLI + args, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_local_database_start_is_idempotent_and_stops():
    tmp_path = Path(tempfile.mkdtemp(prefix="growth-cli-"))  # the postgres user must reach it
    tmp_path.chmod(0o755)
    env = {"GROWTH_LOCAL_DIR": str(tmp_path / "local")}
    first = run(["db", "start"], env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("export DATABASE_URL=")  # eval "$(growth-assets db start)"
    url = first.stdout.strip().removeprefix("export DATABASE_URL=")
    second = run(["db", "start"], env)
    assert second.stdout.strip() == first.stdout.strip()
    assert run(["db", "url"], env).stdout.strip() == url
    try:
        with connect(url) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
        # before: migrate without DATABASE_URL refused the running local database that demo/dev use
        mig = run(["db", "migrate"], env)
        assert mig.returncode == 0, mig.stderr
        assert "migrating the local database" in mig.stdout and "applied" in mig.stdout
        assert "none (up to date)" in run(["db", "migrate"], {"DATABASE_URL": url}).stdout  # the same database
    finally:
        stop = run(["db", "stop"], env)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    # before: the stopped cluster's URL, exit 0
    after = run(["db", "url"], env)
    assert after.returncode == 1 and after.stdout == "" and "stopped" in after.stderr
    mig = run(["db", "migrate"], env)  # never starts a cluster of its own
    assert mig.returncode != 0 and "stopped" in mig.stderr and "Traceback" not in mig.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_version():
    out = run(["--version"])
    assert out.returncode == 0 and out.stdout.startswith("growth-assets 0.")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the data directory to the postgres user")
def test_unreachable_data_directory_is_a_one_line_error(tmp_path):
    out = run(["db", "start"], {"GROWTH_LOCAL_DIR": str(tmp_path / "local")})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "is not traversable by the postgres user" in out.stderr


def test_migrate_then_seed_demo(db_url, tmp_path):
    out = run(["db", "migrate"], {"DATABASE_URL": db_url})
    assert out.returncode == 0 and "up to date" in out.stdout
    truth = tmp_path / "truth.csv"
    out = run(["seed-demo", "--students", "150", "--weeks", "12", "--seed", "4", "--as-of", "2026-11-23",
               "--truth-out", str(truth)], {"DATABASE_URL": db_url})
    assert out.returncode == 0, out.stderr
    assert "seeded 150 students x 12 weeks from 2026-08-31" in out.stdout
    with connect(db_url) as c:
        assert c.execute("SELECT count(DISTINCT user_id) FROM features_topic_daily").fetchone()[0] == 150
    assert len(truth.read_text().splitlines()) == 151
    # again, on top: refused (it would add a second calibration per week), then replaced when asked
    with connect(db_url) as c:
        before = c.execute("SELECT count(*) FROM mirt_ability").fetchone()[0]
    again = run(["seed-demo", "--students", "150", "--seed", "5", "--as-of", "2026-11-23", "--truth-out", str(truth)],
                {"DATABASE_URL": db_url})
    assert again.returncode == 2 and "--replace" in again.stderr
    with connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM mirt_ability").fetchone()[0] == before
    again = run(["seed-demo", "--students", "150", "--seed", "5", "--as-of", "2026-11-23", "--truth-out", str(truth),
                 "--replace"], {"DATABASE_URL": db_url})
    assert again.returncode == 0 and "replaced: deleted" in again.stdout
    with connect(db_url) as c:
        per_week = c.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM mirt_ability"
                             " GROUP BY user_id, date_trunc('week', fitted_at)) w").fetchone()[0]
    assert per_week == 1  # one calibration per student-week, as a single cohort has


@pytest.mark.slow
def test_fit_native_writes_the_spec_json(tmp_path):
    out_file = tmp_path / "fit.json"
    out = run(["fit", "--engine", "native", "--panel", str(REFERENCE_DIR / "sleepstudy.csv"),
               "--out", str(out_file), "--chains", "2", "--samples", "400", "--seed", "11",
               "--target", "300"])
    assert out.returncode == 0, out.stderr[-3000:]
    res = checked_json(json.loads(out_file.read_text()))
    assert res["engine"] == "native" and res["n_students"] == 18 and res["n_obs"] == 180
    # lookback from the panel (weeks 0..9), horizon 4 weeks after its last week
    assert (res["lookback_weeks"], res["horizon_week"], res["target"], res["seed"]) == (10, 13, 300.0, 11)
    assert 230 < res["posterior_summary"]["b_Intercept"]["mean"] < 270


@pytest.mark.parametrize("csv,field", [
    ("student_id,week,score\na,0,1\na,1,nan\nb,0,2\n", "score"),
    ("student_id,week,score\na,0,1\na,0,2\nb,0,2\n", "student_id,week"),
    ("student_id,week,score\na,0.5,1\na,1,2\nb,0,2\n", "week"),
    ("student_id,week\na,0\n", "columns"),
])
def test_fit_refuses_a_bad_panel_naming_the_field(tmp_path, csv, field):
    panel = tmp_path / "p.csv"
    panel.write_text(csv)
    out = run(["fit", "--engine", "native", "--panel", str(panel), "--out", str(tmp_path / "o.json")])
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: {field}:"), out.stderr
    assert not (tmp_path / "o.json").exists()


def test_p_explains_one_student_or_a_few(db_url):
    """`growth-assets p`: P, sigma, mu, the path and why, for each user asked (the explain
    answer), as text or JSON; a bad horizon is a one-line error naming it."""
    from datetime import datetime, timezone

    from growth_assets_tests.metrics.helpers import add_theta, store_fit
    from growth_assets_tests.support.results import make_result

    with connect(db_url) as c:
        store_fit(c, make_result(3))
        add_theta(c, "fresh", 0.4, 0.2, datetime(2026, 8, 1, tzinfo=timezone.utc))  # before the window
    env = {"DATABASE_URL": db_url, "METRICS_USE_BAYESIAN": "true"}
    out = run(["p", "--user", "s00001", "--user", "fresh", "--user", "nobody", "--target", "0.1"], env)
    assert out.returncode == 0, out.stderr
    blocks = out.stdout.split("\n\n")
    assert blocks[0].startswith("s00001: P = 0.") and "path run" in blocks[0] and "sigma" in blocks[0]
    assert "stored: no weekly_kpi row" in blocks[0]  # why the earlier path did not apply
    assert blocks[1].startswith("fresh: P = ") and "path normal" in blocks[1]
    assert blocks[2].startswith("nobody: P = none") and "no theta in mirt_ability" in blocks[2]
    js = run(["p", "--user", "s00001", "--target", "0.1", "--json"], env)
    (a,) = json.loads(js.stdout)
    assert a["user_id"] == "s00001" and a["path"] == "run" and 0 <= a["P"] <= 1 and a["target"] == 0.1
    bad = run(["p", "--user", "s00001", "--horizon", "2026-12-02"], env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: horizon") and "Traceback" not in bad.stderr


def test_the_batch_form_refuses_a_bare_string(conn):
    """Before: compute_goal_attainment_probabilities(s, "s0000001") answered for the users
    "s", "0", "1", ... (the string's characters)."""
    from growth_assets.metrics import compute_goal_attainment_probabilities
    from growth_assets.model.contract import ContractError

    with pytest.raises(ContractError, match="user_ids"):
        compute_goal_attainment_probabilities(conn, "s0000001")


@pytest.mark.slow
def test_demo_ends_with_the_target_one_student_and_the_query(db_url, tmp_path):
    out = run(["demo", "--students", "60"], {"DATABASE_URL": db_url, "GROWTH_LOCAL_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "for example s0000000: P = " in out.stdout and "path stored" in out.stdout
    assert "growth-assets p --user s0000000" in out.stdout
    sql = out.stdout.split("this week's P in SQL:\n", 1)[1].split(";")[0]
    with connect(db_url) as c:
        rows = c.execute(sql).fetchall()
    written = int(re.search(r"P written for (\d+) students", out.stdout).group(1))
    assert 50 <= written <= 60  # 16 weeks of history: a student who stopped early is not in this window
    assert len(rows) == written and all(0 <= float(p) <= 1 for _, p, _, _ in rows)
    # 16 weeks of history: the run of 4 weeks ago was fitted and its P scored on what happened
    assert re.search(r"backtest of partition \d{4}-\d\d-\d\d \(P for the week of \d{4}-\d\d-\d\d\): "
                     r"\d+ students scored, 90 % predictive coverage 0\.\d+", out.stdout), out.stdout
    with connect(db_url) as c:
        assert c.execute("SELECT count(DISTINCT run_id) FROM growth_forecast_backtest").fetchone()[0] == 1


def test_the_demos_folder_is_the_projects_whatever_the_working_directory(tmp_path, monkeypatch):
    """Before: from another folder `db url` found nothing and `db start` made a second, empty cluster."""
    from growth_assets import cli

    monkeypatch.delenv("GROWTH_LOCAL_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.local_dir() == REPO / ".local"
    monkeypatch.setenv("GROWTH_LOCAL_DIR", str(tmp_path / "mine"))
    assert cli.local_dir() == tmp_path / "mine"


def test_help_shows_every_default_and_no_rst():
    top = run(["--help"])
    assert "``" not in top.stdout
    seed = run(["seed-demo", "--help"]).stdout
    assert "(default: 1000)" in seed and "(default: 12)" in seed
    assert "(default: 3000)" in run(["dev", "--help"]).stdout
    assert "(default: None)" not in run(["fit", "--help"]).stdout


@pytest.mark.parametrize("now", ["2026-12-07T00:00:00", "2026-12-07T04:29:59", "2026-12-07T04:30:00",
                                 "2026-12-07T04:30:01", "2026-12-09T12:00:00", "2026-12-13T23:59:59"])
def test_the_demos_default_week_is_the_latest_partition_that_exists(now):
    """Before: the default as_of was today's date, and on a Monday before 04:30 UTC the demo ran
    a partition that did not exist yet (CI hit it at Monday 00:25: DagsterUnknownPartitionError).
    Now the week is the weekly partitions' latest at that moment, whatever the time."""
    from datetime import date, datetime, timezone

    from growth_assets import cli
    from growth_assets.defs.growth.assets import weekly_partitions
    from growth_assets.model.window import Window

    import dagster as dg

    t = datetime.fromisoformat(now).replace(tzinfo=timezone.utc)
    with dg.partition_loading_context(effective_dt=t):
        latest = weekly_partitions.get_last_partition_key()
    assert Window(cli._as_of(None, t), 12).last_week.isoformat() == latest
    assert cli._as_of("2026-11-23", t) == date(2026, 11, 23)  # --as-of as given


@pytest.mark.parametrize("url", ["postgresql://app:S3cret%zzPW@127.0.0.1:5432/growth",  # not a libpq URL
                                 "postgresql://app:S3cretPW@127.0.0.1:1/growth"])  # nothing listens
@pytest.mark.parametrize("cmd", [["db", "migrate"], ["seed-demo", "--students", "10"]])
def test_a_database_error_is_one_line_without_the_password(url, cmd):
    """A DATABASE_URL libpq could not parse ended in a traceback whose last line held the
    password ('invalid percent-encoded token: "S3cret%zzPW"'), on stderr: in the pod's log."""
    out = run(cmd, {"DATABASE_URL": url})
    assert out.returncode == 1, out.stderr
    assert "S3cret" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: database: "), out.stderr
