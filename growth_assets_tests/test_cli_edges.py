"""The commands' arguments, settings and the local cluster at their edges (session 23's review:
each test failed on the code before its fix): a seed, a window or a --truth-out that failed with
a traceback after the database was migrated, a --out that is a folder found after the fit, a URL
setting with an impossible port, a PG_BINDIR silently replaced, and a remembered port another
program (or another PostgreSQL) took since."""

import os
import socket
import subprocess
import sys
import tempfile
import shutil
from pathlib import Path

import pytest

from growth_assets.db import connect

CLI = [sys.executable, "-m", "growth_assets.cli"]


def run(args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(env_extra or {})
    return subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=600)


def _tables(url):
    with connect(url) as c:
        return c.execute("SELECT count(*) FROM mirt_ability").fetchone()[0]


@pytest.mark.parametrize("cmd", ["seed-demo", "demo"])
def test_a_negative_seed_is_a_clear_error_naming_it(db_url, tmp_path, cmd):
    out = run([cmd, "--students", "10", "--seed", "-1", "--as-of", "2026-11-23"],
              {"DATABASE_URL": db_url, "GROWTH_LOCAL_DIR": str(tmp_path)})
    assert "Traceback" not in out.stderr, out.stderr[-600:]
    assert out.returncode == 2 and "--seed" in out.stderr and "-1" in out.stderr


@pytest.mark.parametrize("args,field", [(["--weeks", "200000", "--as-of", "2026-11-23"], "weeks"),
                                       (["--as-of", "0001-01-10"], "as-of")])
def test_a_window_before_year_one_is_a_clear_error_naming_it(db_url, tmp_path, args, field):
    out = run(["seed-demo", "--students", "10", *args, "--truth-out", str(tmp_path / "t.csv")],
              {"DATABASE_URL": db_url})
    assert "Traceback" not in out.stderr, out.stderr[-600:]
    assert out.returncode == 2 and field in out.stderr


def test_an_unwritable_truth_out_is_a_clear_error_naming_it(db_url, tmp_path):
    (tmp_path / "afile").write_text("x")
    out = run(["seed-demo", "--students", "10", "--as-of", "2026-11-23",
               "--truth-out", str(tmp_path / "afile" / "t.csv")], {"DATABASE_URL": db_url})
    assert "Traceback" not in out.stderr, out.stderr[-600:]
    assert out.returncode == 2 and "--truth-out" in out.stderr


def test_fit_out_that_is_a_directory_is_refused_before_the_fit(tmp_path, monkeypatch, capsys):
    from growth_assets import cli
    from growth_assets.model import result

    panel = tmp_path / "p.csv"
    panel.write_text("student_id,week,score\na,0,1\na,1,2\nb,0,2\nb,1,3\n")
    called = []

    def fake_fit(*a, **k):
        called.append(1)
        raise RuntimeError("the fit started")

    monkeypatch.setattr(result, "fit_panel", fake_fit)
    monkeypatch.setenv("R_BRMS_BASE_URL", "http://127.0.0.1:9")  # the brms client: built without a call
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    try:
        rc = cli.main(["fit", "--engine", "brms", "--panel", str(panel), "--out", str(outdir)])
    except RuntimeError:
        rc = None
    assert not called, "the fit ran although --out is a directory (IsADirectoryError after it)"
    assert rc == 2 and "--out" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["R_BRMS_BASE_URL", "DAGSTER_WEBSERVER_URL"])
def test_a_url_setting_with_an_impossible_port_is_refused_naming_it(name):
    from growth_assets.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: "http://localhost:99999"})


def test_a_wrong_pg_bindir_is_not_silently_replaced(tmp_path, monkeypatch):
    from growth_assets.db import localpg

    monkeypatch.setenv("PG_BINDIR", str(tmp_path / "no-such-postgres" / "bin"))
    try:
        found = localpg.find_bindir()
    except localpg.LocalPgError as e:
        assert "PG_BINDIR" in str(e)
        return
    pytest.fail(f"PG_BINDIR={tmp_path}/no-such-postgres/bin was ignored: found {found}")


def test_a_bad_seed_leaves_a_new_database_unchanged(empty_db_url, tmp_path):
    """The arguments are checked before the database is started or changed: the seed was not,
    and a refused seed-demo had migrated the database first."""
    out = run(["seed-demo", "--students", "10", "--seed", "-1", "--as-of", "2026-11-23",
               "--truth-out", str(tmp_path / "t.csv")], {"DATABASE_URL": empty_db_url})
    assert out.returncode != 0
    with connect(empty_db_url) as c:
        tables = c.execute("SELECT table_schema || '.' || table_name FROM information_schema.tables"
                           " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')").fetchall()
    assert tables == [], f"the refused seed-demo migrated the database first: {tables[:4]} ..."


def test_a_remembered_port_taken_by_another_program_is_given_up_for_a_free_one(tmp_path):
    """The port stayed in <datadir>.port: every later `db start` failed with "pg_ctl: could not
    start server / Examine the log output", naming neither the port nor the log."""
    from growth_assets.db import localpg

    base = Path(tempfile.mkdtemp(prefix="growth-cli-pg-"))
    base.chmod(0o755)
    datadir = base / "pg" / "data"
    try:
        port = localpg.ensure_cluster(datadir).port
        localpg.stop_cluster(datadir)
        with socket.socket() as s:  # another program now listens on the remembered port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
            cluster = localpg.ensure_cluster(datadir)
            assert cluster.port != port and cluster.is_running()
        assert (datadir.parent / "data.port").read_text().strip() == str(cluster.port)
        assert localpg.ensure_cluster(datadir).port == cluster.port  # running: kept
    finally:
        localpg.stop_cluster(datadir)
        shutil.rmtree(base, ignore_errors=True)


def test_a_remembered_port_now_served_by_another_postgres_is_not_taken_for_ours(pg_admin_url):
    """After `db stop` the demo's remembered port is free; another PostgreSQL (the tests', a
    second checkout's demo) may take it. `db start` then took that server for the demo's own,
    and seed-demo wrote into it."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from growth_assets.db import localpg

    other_port = int(conninfo_to_dict(pg_admin_url)["port"])
    base = Path(tempfile.mkdtemp(prefix="growth-cli-pg-"))
    base.chmod(0o755)
    datadir = base / "pg" / "data"
    try:
        localpg.ensure_cluster(datadir)
        localpg.stop_cluster(datadir)
        (datadir.parent / "data.port").write_text(str(other_port))  # the port, reused by the other server
        cluster = localpg.ensure_cluster(datadir)
        assert cluster.port != other_port
        with psycopg.connect(cluster.url("postgres")) as c:
            served = c.execute("SHOW data_directory").fetchone()[0]
        assert Path(served).resolve() == datadir.resolve(), (
            f"ensure_cluster({datadir}) returned {cluster.url()}, served from {served}")
    finally:
        localpg.stop_cluster(datadir)
        shutil.rmtree(base, ignore_errors=True)
