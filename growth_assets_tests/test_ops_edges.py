"""The operational surface at its edges (session 21's review: each test failed on the code before
its fix): the CLI's argument errors, settings, pins, the manifests, the demo's deletes, a URL's
password and search_path, a local server that died."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "growth_assets.cli"]


def run(args, env_extra=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(env_extra or {})
    return subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=timeout)


# --- seed-demo / demo argument errors ---------------------------------------------------------


@pytest.mark.parametrize("args, option", [
    (["seed-demo", "--students", "1"], "students"),
    (["seed-demo", "--weeks", "0"], "weeks"),
    (["seed-demo", "--students", "20000000"], "students"),
    (["seed-demo", "--as-of", "2026-02-30"], "as-of"),
    (["seed-demo", "--as-of", "23/11/2026"], "as-of"),
])
def test_seed_demo_bad_argument_is_a_one_line_error_naming_it(db_url, tmp_path, args, option):
    """A bad --students/--weeks/--as-of ended in a Python traceback (ValueError from
    cohort._check or date.fromisoformat), exit 1, after the database had been migrated and the
    source tables created; `fit` and `p` answer such errors in one line, exit 2."""
    out = run(args + ["--truth-out", str(tmp_path / "t.csv")],
              {"DATABASE_URL": db_url, "GROWTH_LOCAL_DIR": str(tmp_path)})
    assert "Traceback" not in out.stderr, out.stderr[-600:]
    assert out.returncode == 2, (out.returncode, out.stderr[-300:])
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and option in last, last


def test_demo_bad_as_of_is_a_one_line_error(db_url, tmp_path):
    out = run(["demo", "--as-of", "2026-02-30"], {"DATABASE_URL": db_url, "GROWTH_LOCAL_DIR": str(tmp_path)})
    assert "Traceback" not in out.stderr, out.stderr[-600:]
    assert out.returncode == 2


# --- fit: an --out that cannot be written ------------------------------------------------------


def test_fit_out_in_a_missing_folder_fails_before_the_fit(tmp_path):
    """`fit --out DIR/x.json` with DIR missing fitted the whole panel (minutes with brms) and then
    ended in a FileNotFoundError traceback, the result lost."""
    out = run(["fit", "--engine", "native", "--panel", str(REPO / "reference" / "sleepstudy.csv"),
               "--out", str(tmp_path / "missing" / "x.json"), "--chains", "2", "--samples", "400"])
    assert "Traceback" not in out.stderr, out.stderr[-400:]
    assert out.returncode == 2
    assert "--out" in out.stderr


# --- db migrate: the migrations' own errors ---------------------------------------------------


def test_migration_error_is_one_line_not_a_traceback(db_url):
    """MigrationError (a RuntimeError) is not among main()'s one-line errors: the Job's log gets a
    traceback for 'migration X changed after it was applied'."""
    from growth_assets.db import connect

    with connect(db_url) as c:
        c.execute("UPDATE growth_schema_migrations SET checksum = 'x'"
                  " WHERE version = (SELECT min(version) FROM growth_schema_migrations)")
    out = run(["db", "migrate"], {"DATABASE_URL": db_url})
    assert out.returncode == 1
    assert "Traceback" not in out.stderr, out.stderr[-800:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")


# --- settings ---------------------------------------------------------------------------------


def test_brms_n_samples_within_its_range_is_accepted_alone():
    """BRMS_N_SAMPLES accepts 200..20000, but any value above 8000 set alone is refused because of
    BRMS_MAX_N_SAMPLES's default (8000), a variable no README or ConfigMap mentions."""
    from growth_assets.settings import N_SAMPLES, Settings

    assert N_SAMPLES.hi == 20000
    Settings.from_env({"BRMS_N_SAMPLES": "10000"})


def test_every_variable_settings_reads_is_documented():
    src = (REPO / "growth_assets" / "settings.py").read_text()
    names = set(re.findall(r'IntLimit\("([A-Z][A-Z0-9_]+)"', src))
    names |= set(re.findall(r'env(?:_[a-z]+)?\(env, "([A-Z][A-Z0-9_]+)"', src))
    names |= set(re.findall(r'_get\(env, "([A-Z][A-Z0-9_]+)"', src))
    names |= set(re.findall(r'env\.get\("([A-Z][A-Z0-9_]+)"', src))
    names -= {"XDG_CACHE_HOME"}  # the XDG convention
    docs = (REPO / "README.md").read_text() + (REPO / "k8s" / "README.md").read_text()
    assert len(names) > 20
    assert sorted(n for n in names if n not in docs) == []


# --- pins -------------------------------------------------------------------------------------


def test_the_jax_range_excludes_versions_without_jax_shard_map():
    """native.py calls jax.shard_map(..., check_vma=False); jax 0.6.0 has no jax.shard_map (its
    jax/__init__.py exports none; 0.6.1 is the first that does, with check_vma), yet pyproject
    allows jax>=0.6."""
    from packaging.requirements import Requirement

    assert "jax.shard_map(" in (REPO / "growth_assets" / "model" / "native.py").read_text()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    jax = next(Requirement(d) for d in deps if Requirement(d).name == "jax")
    assert not jax.specifier.contains("0.6.0"), str(jax.specifier)


# --- k8s ----------------------------------------------------------------------------------------


def _env(container, name):
    return next((e for e in container.get("env", []) if e["name"] == name), None)


def test_native_engine_deployment_starts_without_the_r_token_secret():
    """k8s/README: with the native engine (the shipped default) 'no R service, no token ... needed
    (the r-brms-plumber resources can be scaled to 0 or removed)'. But the code server and every
    run pod read Secret r-brms-credentials without optional: true: without that Secret they never
    start (CreateContainerConfigError)."""
    import yaml

    from growth_assets_tests.deploy.k8s_support import overlay

    docs = overlay("example")
    uc = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "growth-user-code")
    c = next(c for c in uc["spec"]["template"]["spec"]["containers"] if c["name"] == "user-code")
    ref = _env(c, "R_BRMS_INTERNAL_TOKEN")["valueFrom"]["secretKeyRef"]
    inst = yaml.safe_load((REPO / "dagster.yaml").read_text())
    run_env = inst["run_launcher"]["config"]["run_k8s_config"]["container_config"]["env"]
    run_ref = next(e for e in run_env if e["name"] == "R_BRMS_INTERNAL_TOKEN")["valueFrom"]["secretKeyRef"]
    assert ref.get("optional") is True and run_ref.get("optional") is True, (ref, run_ref)


def test_external_secret_uses_an_api_version_current_operators_serve():
    """External Secrets Operator v0.17.0 (2025-05) stopped serving external-secrets.io/v1beta1
    (its release notes: 'v0.17.0 Stops serving v1beta1 apis'); the seedtest overlay renders
    v1beta1, which such a cluster refuses ('no matches for kind ExternalSecret in version ...')."""
    from growth_assets_tests.deploy.k8s_support import seedtest

    es = next(d for d in seedtest() if d["kind"] == "ExternalSecret")
    assert es["apiVersion"] == "external-secrets.io/v1", es["apiVersion"]


def test_files_named_in_the_manifests_exist():
    """k8s/base/kustomization.yaml sends the reader to docker/README.md, which does not exist."""
    missing = []
    for f in (REPO / "k8s").rglob("*.yaml"):
        for path in re.findall(r"\b((?:docker|k8s|scripts|r_brms_plumber|growth_assets_tests)/[\w./-]+\.(?:md|yaml|sh|py|R))",
                               f.read_text()):
            if not (REPO / path).exists():
                missing.append(f"{f.relative_to(REPO)}: {path}")
    assert missing == []


# --- demo on DATABASE_URL: other students' rows -------------------------------------------------


@pytest.mark.slow
def test_demo_never_deletes_rows_it_did_not_seed(db_url, tmp_path):
    """`growth-assets demo` honours DATABASE_URL and, finding any row whose user_id matches
    ^s[0-9]{7}$ in the platform's source tables, deletes every such row without asking
    (`seed-demo` at least wants --replace). A platform whose ids look like s1234567 loses its
    students' calibrations and practice rows."""
    from growth_assets.db import connect

    with connect(db_url) as c:
        c.execute("INSERT INTO mirt_ability (user_id, theta, se, model, version, fitted_at)"
                  " VALUES ('s1234567', 0.4, 0.2, 'platform-2pl', 'v9', '2020-01-08T10:00:00Z')")
        c.execute("INSERT INTO features_topic_daily (user_id, topic_id, date, attempts, correct)"
                  " VALUES ('s7654321', 'algebra', '2020-01-08', 10, 7)")
    out = run(["demo", "--students", "20", "--weeks", "2"],
              {"DATABASE_URL": db_url, "GROWTH_LOCAL_DIR": str(tmp_path), "BRMS_N_SAMPLES": "400"})
    with connect(db_url) as c:
        kept = c.execute("SELECT (SELECT count(*) FROM mirt_ability WHERE user_id = 's1234567')"
                         " + (SELECT count(*) FROM features_topic_daily WHERE user_id = 's7654321')").fetchone()[0]
    assert kept == 2, out.stdout[:300]


# --- a DATABASE_URL libpq cannot parse, in a run ----------------------------------------------


def test_a_run_on_an_unparseable_database_url_does_not_record_the_password(monkeypatch, tmp_path):
    """The CLI hides DATABASE_URL's password in libpq's 'invalid percent-encoded token' error
    (test_cli.test_a_database_error_is_one_line_without_the_password), but a run pod that connects
    through db.connection.project_conninfo gets the same error unredacted: in the step's failure
    event (stored in Dagster's event log, shown in the UI) and in the pod's log."""
    import dagster as dg

    from growth_assets.defs import build_definitions
    from growth_assets.settings import Settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://app:S3cret%zzPW@127.0.0.1:5432/growth")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    defs = build_definitions(Settings.from_env())
    job = defs.resolve_job_def("weekly_growth_job")
    with dg.DagsterInstance.ephemeral() as instance:
        res = job.execute_in_process(partition_key="2026-11-16", instance=instance, raise_on_error=False)
        assert not res.success
        texts = []
        for ev in res.all_events:
            if ev.is_step_failure:
                err = ev.step_failure_data.error
                while err is not None:
                    texts.append(err.message)
                    err = err.cause
    assert texts, "no step failed"
    assert not [t for t in texts if "S3cret" in t], texts


# --- connection: the URL's own search_path ------------------------------------------------------


@pytest.mark.parametrize("options", ["-csearch_path%3Dplatform",  # the README's form: passes (control)
                                     "--search_path%3Dplatform", "-cSEARCH_PATH%3Dplatform"])
def test_the_urls_search_path_in_any_form_postgres_accepts_is_kept(db_url, options):
    """db/connection.with_schema_options finds the URL's search_path only in the form
    '-c search_path=...'; PostgreSQL also takes '--search_path=...' and any case of the name.
    Those are then overridden by the appended '-c search_path=growth,public': the platform's
    tables in schema `platform` are no longer found."""
    import psycopg

    from growth_assets.db import connect

    url = db_url + "?options=" + options
    with psycopg.connect(url) as c:
        assert c.execute("SHOW search_path").fetchone()[0] == "platform"  # what the URL asks for
    with connect(url) as c:
        assert c.execute("SHOW search_path").fetchone()[0].replace(" ", "") == "growth,platform"


# --- BRMS_SCORE_RANGE: the two sides read it differently ---------------------------------------


@pytest.mark.parametrize("value", ["-1_000,1_000", "-\u0661\u0660,\u0661\u0660"])
def test_score_range_refuses_what_the_r_service_refuses(value):
    """settings.py refuses '1_000' and other scripts' digits in every number (_INT, _FLOAT) but
    BRMS_SCORE_RANGE goes through float(): '-1_000,1_000' is accepted here, while the R service
    (util.R env_range, as.numeric) refuses it and does not start."""
    from growth_assets.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="BRMS_SCORE_RANGE"):
        Settings.from_env({"BRMS_SCORE_RANGE": value})


# --- fit: which settings the environment gives ---------------------------------------------------


def test_fit_takes_its_horizon_from_brms_horizon_weeks_like_its_other_defaults(tmp_path):
    """`fit` takes --chains/--samples/--seed/--target defaults from BRMS_N_CHAINS, BRMS_N_SAMPLES,
    BRMS_SEED, METRICS_DEFAULT_TARGET, but --horizon-weeks is a literal 4: BRMS_HORIZON_WEEKS=8
    is ignored (horizon week 13 for the 10-week sleepstudy panel, not 17)."""
    import json

    out = run(["fit", "--engine", "native", "--panel", str(REPO / "reference" / "sleepstudy.csv"),
               "--out", str(tmp_path / "f.json"), "--samples", "400"],
              {"BRMS_HORIZON_WEEKS": "8", "BRMS_N_CHAINS": "3"})
    assert out.returncode == 0, out.stderr[-500:]
    d = json.loads((tmp_path / "f.json").read_text())
    assert d["n_chains"] == 3  # BRMS_N_CHAINS is honoured
    assert d["horizon_week"] == 9 + 8, d["horizon_week"]


# --- db stop after the local server died -----------------------------------------------------------


def test_db_stop_after_the_server_died_is_not_an_error():
    """A server that died (OOM kill, crash, a reboot) leaves postmaster.pid behind; `db stop`
    then runs pg_ctl stop, which fails ('could not send stop signal ... No such process'): exit 1
    'error: local database: pg_ctl stop failed' instead of 'the local database was not running'."""
    import signal
    import time

    from growth_assets.db import localpg

    import shutil
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="review-ops-pg-"))  # traversable by the postgres user
    tmp_path.chmod(0o755)
    datadir = tmp_path / "pg" / "data"
    cluster = localpg.ensure_cluster(datadir)
    pid = int((datadir / "postmaster.pid").read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)  # the server this test started
    for _ in range(50):
        if not cluster.is_running():
            break
        time.sleep(0.1)
    try:
        out = run(["db", "stop"], {"GROWTH_LOCAL_DIR": str(tmp_path)})
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    assert out.returncode == 0, out.stderr
