"""``growth-assets``: the project's commands (database, demo cohort, demo run, fit a CSV)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

log = logging.getLogger("growth_assets")


def project_root() -> Path | None:
    """The source checkout this package runs from (its pyproject.toml beside the package), or
    None for an installed package."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "workspace.yaml").is_file() else None


def local_dir() -> Path:
    """Where the demo keeps its database, Dagster home and outputs (git-ignored):
    GROWTH_LOCAL_DIR, else ``.local`` of the project (whatever the working directory), else of
    the working directory for an installed package."""
    from .settings import Settings

    configured = Settings.from_env().local_dir
    if configured:
        return Path(configured).resolve()
    root = project_root()
    return (root / ".local") if root else Path(".local").resolve()


def _pg_datadir() -> Path:
    return local_dir() / "pg" / "data"


def _database_url(start_local: bool = True) -> str:
    """DATABASE_URL, or the demo's local cluster (started if needed)."""
    from .settings import Settings

    url = Settings.from_env().database_url
    if url:
        return url
    from .db import localpg

    if not start_local:  # the local cluster if it runs (as `demo` and `dev` would use it), never a new one
        portfile = _pg_datadir().parent / "data.port"
        if not portfile.exists():
            raise SystemExit("no DATABASE_URL and no local database: set DATABASE_URL, "
                             "or run `growth-assets db start`")
        cluster = localpg.LocalCluster(_pg_datadir(), int(portfile.read_text()))
        if not cluster.is_running():
            raise SystemExit("no DATABASE_URL and the local database is stopped: run `growth-assets db start`")
        return cluster.url()

    cluster = localpg.ensure_cluster(_pg_datadir())
    return cluster.url()


def cmd_db(args: argparse.Namespace) -> int:
    from .db import localpg

    if args.action == "start":
        cluster = localpg.ensure_cluster(_pg_datadir())
        print(f"export DATABASE_URL={cluster.url()}")
        return 0
    if args.action == "stop":
        stopped = localpg.stop_cluster(_pg_datadir())
        print("stopped the local database" if stopped else "the local database was not running")
        return 0
    if args.action == "url":
        try:
            print(_database_url(start_local=False))
        except SystemExit as e:
            print(e.code, file=sys.stderr)
            return 1
        return 0
    return _migrate(args)


def _migrate(args: argparse.Namespace) -> int:
    """``db migrate``: the project's own migrations; the platform's tables only checked, and
    changed only with --apply-source-changes; --dry-run prints the SQL and changes nothing."""
    from .db import source_tables
    from .db.connection import connect
    from .db.migrate import migrate, pending, tables_to_move
    from .settings import Settings

    url = _database_url(start_local=False)
    if not Settings.from_env().database_url:
        print("DATABASE_URL is not set: migrating the local database (`growth-assets db url`)")
    schema = Settings.from_env().db_schema
    with connect(url) as conn:
        todo = pending(conn)
        old, moving = tables_to_move(conn)
    if args.check:
        if moving:
            print(f"pending: the project's tables are in schema {old}, to be moved to {schema}")
        if todo:
            print(f"pending in schema {schema}: {len(todo)} migration(s): {', '.join(v for v, _ in todo)}")
        if moving or todo:
            print("run `growth-assets db migrate` (Kubernetes: the growth-db-migrate Job)")
            return 3
        print(f"the project's tables in schema {schema} are up to date")
        return 0
    if args.dry_run:
        if moving:
            print(f"-- would move the project's tables from schema {old} to {schema}: {', '.join(moving)}")
        for version, text in todo:
            print(f"-- would apply migration {version}:\n{text.rstrip()}\n")
        if not todo:
            print("-- the project's tables are up to date")
    else:
        notes: list[str] = []
        applied = migrate(url, notes=notes)
        for n in notes:
            print(n)
        print(f"applied {len(applied)} migration(s) in schema {schema}: {', '.join(applied) or 'none (up to date)'}")
    if args.apply_source_changes and not args.dry_run:
        made = source_tables.plan_and_apply(url)
        for line in made:
            print(f"changed {line}")
        if not made:
            print("the platform's tables have what the pipeline needs")
        return 0
    with connect(url) as conn:
        changes = source_tables.plan(conn)
    if not changes:
        print("the platform's tables have what the pipeline needs")
        return 0
    print(f"the platform's tables: {len(changes)} change(s) the pipeline would need"
          + ("" if args.dry_run else " (nothing changed)") + ":")
    for c in changes:
        print(f"- {c.describe()}")
    if not args.dry_run:
        print("to make them: growth-assets db migrate --apply-source-changes")
    return 0


def _as_of(value: str | None, now: datetime | None = None) -> date:
    """``--as-of``, or the as_of of the latest weekly run due by now: on a Monday before the
    run's time (04:30 UTC) the week before's (``latest_run_as_of``), whose partition exists.
    Before: today's date, and between Monday 00:00 and 04:30 the demo asked for a partition
    that did not exist yet (DagsterUnknownPartitionError)."""
    from .model.contract import ContractError
    from .model.window import latest_run_as_of

    if not value:
        return latest_run_as_of(now)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ContractError("--as-of", "must be an ISO date (YYYY-MM-DD)", value) from None


def _check_cohort_args(students: int, weeks: int | None, as_of: str | None, seed: int) -> date:
    """seed-demo's and demo's arguments, checked before the database is started or changed
    (they failed with a traceback after it had been migrated): the day they name. The seed
    (numpy refused -1) and the cohort's first week (before year 1: an OverflowError) too."""
    from .demo.cohort import check_size
    from .model.contract import ContractError
    from .model.window import Window
    from .settings import SEED

    check_size(students, weeks)
    SEED.check("--seed", seed)
    day = _as_of(as_of)
    try:
        Window(day, weeks or 1).start
    except OverflowError:
        raise ContractError("--weeks/--as-of", "the cohort's first week would be before year 1",
                            f"--weeks {weeks} --as-of {day.isoformat()}") from None
    return day


def _file_to_write(option: str, path: Path, make_folder: bool = False) -> Path:
    """An output file's path, checked before any long or changing work (a fit of minutes, a
    migrated database): a file, not a folder, in a folder that exists (or, ``make_folder``, can be
    made) and is writable. Else a ContractError naming ``option``."""
    from .model.contract import ContractError

    if make_folder:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ContractError(option, f"its folder cannot be made ({e.strerror})", str(path)) from None
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise ContractError(option, "its folder must exist and be writable", str(path))
    if path.is_dir():
        raise ContractError(option, "must be a file path, not a folder", str(path))
    return path


def _prepare_demo_database(url: str) -> None:
    """The project's migrations, and the source tables a synthetic cohort goes into: created
    when missing (with their indexes). A database whose own platform tables would need a key
    dropped or rows deleted is not a demo database: refused, saying why."""
    from .db import source_tables
    from .db.migrate import migrate

    migrate(url)
    from .db.connection import connect

    with connect(url) as conn:
        changes = source_tables.plan(conn)
    harmful = [c for c in changes if c.destructive and "does not exist" not in c.what]
    fresh = {c.table for c in changes if "does not exist" in c.what}
    harmful = [c for c in harmful if c.table not in fresh]
    if harmful:
        raise SystemExit("this database's platform tables are not a demo's: seeding a synthetic cohort would need\n"
                         + "\n".join(c.describe() for c in harmful)
                         + "\n(see `growth-assets db migrate --dry-run`; use a database of its own for the demo)")
    source_tables.apply(url, changes)


def cmd_seed_demo(args: argparse.Namespace) -> int:
    from .db.connection import connect
    from .demo.cohort import delete_demo_rows, demo_rows, seed_cohort

    as_of = _check_cohort_args(args.students, args.weeks, args.as_of, args.seed)
    # default GROWTH_LOCAL_DIR/demo/true_lines.csv; a path under a regular file failed with a
    # traceback after the database was migrated
    truth = _file_to_write("--truth-out", Path(args.truth_out) if args.truth_out
                           else local_dir() / "demo" / "true_lines.csv", make_folder=True)
    url = _database_url()
    _prepare_demo_database(url)
    with connect(url) as conn:
        n = demo_rows(conn)
        if n and not args.replace:
            print(f"error: {n} rows of demo students (ids s0000000…) are in the source tables already: seeding again"
                  " would add more calibrations to the same weeks. --replace deletes them first", file=sys.stderr)
            return 2
        if n:
            print(f"replaced: deleted {delete_demo_rows(conn)} rows of the earlier demo cohort")
        rep = seed_cohort(conn, args.students, args.weeks, args.seed, as_of, truth)
    print(f"seeded {rep.students} students x {rep.weeks} weeks from {rep.first_week}: "
          f"{rep.mirt_rows} mirt_ability, {rep.topic_rows} student_topic_theta, "
          f"{rep.daily_rows} features_topic_daily rows; true lines in {rep.truth_path}")
    return 0


def dagster_home() -> Path:
    """The demo's Dagster instance: its own DAGSTER_HOME with storage on the local PostgreSQL."""
    home = local_dir() / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        "# written by growth-assets demo: the demo's own instance, on the demo's PostgreSQL\n"
        "storage:\n  postgres:\n    postgres_url:\n      env: DAGSTER_PG_URL\n"
        "telemetry:\n  enabled: false\n"
    )
    return home


def cmd_demo(args: argparse.Namespace) -> int:
    import dagster as dg

    from .db.connection import connect
    from .defs import build_definitions
    from .demo.cohort import delete_demo_rows, demo_rows, seed_cohort
    from .model.window import Window
    from .settings import Settings

    as_of = _check_cohort_args(args.students, args.weeks, args.as_of, args.seed)
    url = _database_url()
    os.environ["DATABASE_URL"] = url  # for the definitions' EnvVar and the run
    _prepare_demo_database(url)
    with connect(url) as conn:
        if demo_rows(conn):  # the demo's own database: a new run replaces the last cohort, and says so
            print(f"replaced the earlier demo cohort ({delete_demo_rows(conn)} rows deleted)")
        weeks = args.weeks or Settings.from_env().lookback_weeks + Settings.from_env().horizon_weeks
        rep = seed_cohort(conn, args.students, weeks, args.seed, as_of, local_dir() / "demo" / "true_lines.csv")
    print(f"seeded {rep.students} students x {rep.weeks} weeks")
    home = dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["DAGSTER_PG_URL"] = url
    settings = Settings.from_env()
    defs = build_definitions(settings)
    last_week = Window(as_of, settings.lookback_weeks).last_week
    past = last_week - timedelta(weeks=settings.horizon_weeks)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.DagsterInstance.get() as instance:
        def run(job_name: str, partition: date):
            print(f"running {job_name} for partition {partition} with the {settings.chosen_engine} engine")
            out = defs.resolve_job_def(job_name).execute_in_process(
                partition_key=partition.isoformat(), instance=instance, raise_on_error=False, run_config=quiet)
            for ev in out.get_asset_check_evaluations():
                print(f"  check {ev.check_name}: {'passed' if ev.passed else 'FAILED ' + ev.severity.value}")
            return out

        print(f"Dagster home {home}")
        scored = None
        if rep.weeks >= settings.lookback_weeks + settings.horizon_weeks:
            # a past run whose horizon week is the cohort's last: its P scored against what happened
            if run("weekly_growth_job", past).success:
                scored = run("forecast_backtest_job", past)
        res = run("weekly_growth_job", last_week)
    if scored is not None and scored.success:
        bmd = scored.asset_materializations_for_node("goal_forecast_backtest")[0].metadata
        print(f"backtest of partition {past} (P for the week of {bmd['P_week'].value}): "
              f"{bmd['students_scored'].value} students scored, 90 % predictive coverage "
              f"{bmd['coverage_90_model'].value:.3f}, Brier {bmd['brier_model'].value:.3f} "
              f"(Normal baseline {bmd['brier_baseline'].value:.3f}, skill {bmd['brier_skill'].value:.2f})")
    if not res.success:
        print("the weekly graph failed; see the Dagster UI (growth-assets dev) for the run", file=sys.stderr)
        return 1
    md = {m.asset_key.to_user_string(): m.metadata for m in
          (e.event_specific_data.materialization for e in res.get_asset_materialization_events())}
    kpi = md["weekly_kpi_P"]
    print(f"run {kpi['run_id'].value}: P written for {kpi['rows_written'].value} students "
          f"(P from {kpi['P_min'].value:.3f} to {kpi['P_max'].value:.3f}, target {kpi['P_target'].value:g}, "
          f"for the week of {kpi['P_week'].value})")
    # one student, as the real-time path answers for it, and where this week's P are
    from .db import get_session
    from .metrics import explain_goal_attainment_probability

    with get_session(url) as s:
        first = s.execute("SELECT min(user_id) FROM weekly_kpi WHERE week_start = %s AND kpis ? 'P'",
                          (Window(as_of, settings.lookback_weeks).week_start,)).fetchone()[0]
        a = explain_goal_attainment_probability(s, first, kpi["P_target"].value)
    print(f"target {a.target:g} (METRICS_DEFAULT_TARGET, in score units); for example {a.user_id}: "
          f"P = {a.P:.3f}, sigma {a.sigma:.3g}, path {a.path}"
          + (f" ({'; '.join(a.reasons)})" if a.reasons else ""))
    print(f"more: .venv/bin/growth-assets p --user {a.user_id}")
    print("this week's P in SQL:\n"
          "  SELECT user_id, kpis->>'P' AS p, kpis->>'sigma' AS sigma, kpis->>'P_week' AS p_week\n"
          f"  FROM weekly_kpi WHERE week_start = '{Window(as_of, settings.lookback_weeks).week_start}'"
          " AND kpis ? 'P' ORDER BY user_id;")
    print("browse it: .venv/bin/growth-assets dev   (Dagster UI on http://127.0.0.1:3000)")
    return 0


def _default_stop_signals() -> None:
    """SIGINT and SIGTERM back at their defaults for the program this process becomes (exec):
    whatever started us (a shell's background job, a test runner) may have left them ignored,
    an ignored disposition survives exec, and a non-interactive sh cannot trap a signal that
    was ignored when it started (POSIX). Seen: Dagster's in-process execution gives SIGTERM
    SIGINT's handler (``dagster._utils.interrupts``), and in a background job, where SIGINT is
    ignored, that left SIGTERM ignored in the tests' process: the R service's serve.sh never
    shut down on SIGTERM."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def cmd_dev(args: argparse.Namespace) -> int:
    """``dagster dev`` on the demo's instance and database, in the foreground."""

    url = _database_url()
    env = {**os.environ, "DATABASE_URL": url, "DAGSTER_PG_URL": url, "DAGSTER_HOME": str(dagster_home())}
    workspace = Path(args.workspace)
    if not workspace.is_absolute() and not workspace.exists() and project_root():
        workspace = project_root() / workspace  # the project's, from any working directory
    workspace = workspace.resolve()
    _default_stop_signals()  # dagster dev must be stoppable by them
    os.execvpe(sys.executable, [sys.executable, "-m", "dagster", "dev", "-w", str(workspace),
                                "-h", args.host, "-p", str(args.port)], env)


def service_dir() -> Path:
    """The R service's folder: ``R_BRMS_SERVICE_DIR``, or ``r_brms_plumber/`` beside the package."""
    from .settings import Settings

    d = Path(Settings.from_env().r_service_dir or Path(__file__).resolve().parents[1] / "r_brms_plumber")
    if not (d / "run.R").exists():
        raise SystemExit(f"the R service is not at {d} (set R_BRMS_SERVICE_DIR)")
    return d


def cmd_r_service(args: argparse.Namespace) -> int:
    """The R brms service in the foreground; installs Debian's R packages first if missing."""
    import shutil
    import subprocess

    d = service_dir()
    installer = d.parent / "scripts" / "install_r.sh"
    if installer.exists() and subprocess.run(["bash", str(installer), "--check"],
                                             stdout=subprocess.DEVNULL).returncode != 0:
        print("installing Debian's R packages for the brms service (scripts/install_r.sh)")
        subprocess.run(["bash", str(installer)], check=True)
    rscript = shutil.which("Rscript")
    if not rscript:
        raise SystemExit("Rscript not found: run scripts/install_r.sh")
    argv = ["/bin/sh", str(d / "serve.sh"), "--port", str(args.port), "--host", args.host]
    from .settings import Settings

    if not (Settings.from_env().r_brms_internal_token or "").strip() and args.host in ("127.0.0.1", "::1", "localhost"):
        print("R_BRMS_INTERNAL_TOKEN is not set: serving without a token on the loopback interface only")
        argv.append("--allow-no-token")
    _default_stop_signals()  # serve.sh traps SIGTERM: a graceful shutdown
    os.execv(argv[0], argv)  # serve.sh runs run.R


def cmd_p(args: argparse.Namespace) -> int:
    """P for a few students, with how it was found (``explain_goal_attainment_probability``)."""
    import dataclasses
    import json

    from .db import get_session
    from .metrics import compute_goal_attainment_probabilities

    with get_session(_database_url()) as s:  # DATABASE_URL, or the demo's local database
        answers = compute_goal_attainment_probabilities(s, args.user, args.target, horizon=args.horizon)
    if args.json:
        print(json.dumps([dataclasses.asdict(a) for a in answers.values()], default=str, indent=2))
        return 0

    def fmt(x: float | None, digits: int = 4) -> str:
        return "none" if x is None else f"{x:.{digits}g}"

    blocks = []
    for a in answers.values():
        lines = [f"{a.user_id}: P = {fmt(a.P, 3)} (target {a.target:g}"
                 + (f", week of {a.p_week}" if a.p_week else "") + f"), sigma {fmt(a.sigma)}, mu {fmt(a.mu)}",
                 f"  path {a.path}" + (f", run {a.run_id}" if a.run_id else "")
                 + (f", {a.n_obs} week(s) of scores" if a.n_obs is not None else "")
                 + (f" ({a.n_new} since the window)" if a.n_new else "")]
        lines += [f"  - {r}" for r in a.reasons]
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0


def read_panel_csv(path: str):
    """A ``student_id,week,score`` CSV as text columns: an id "NA" or "null" is an id, not a
    missing value; the numbers are checked by ``Panel``. Bad files are one-line errors."""
    import pandas as pd

    from .model.contract import PanelError

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8")
    except FileNotFoundError:
        raise PanelError("--panel", "no such file", path) from None
    except UnicodeDecodeError:
        raw = Path(path).read_bytes()
        try:
            raw.decode("utf-8")
            where = "somewhere"
        except UnicodeDecodeError as e:  # the exact place, not pandas' chunk offset
            line = raw.count(b"\n", 0, e.start) + 1
            where = f"byte {raw[e.start]:#04x} on line {line}"
        raise PanelError("--panel", f"not UTF-8 text ({where})", path) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise PanelError("--panel", f"not a CSV table: {str(e).splitlines()[0]}", path) from None


def cmd_fit(args: argparse.Namespace) -> int:
    from .model.contract import horizon_week
    from .model.engine import FitSettings
    from .model.engines import make_engine
    from .model.panel import Panel
    from .model.result import fit_panel
    from .settings import Settings

    s = Settings.from_env()
    out = _file_to_write("--out", Path(args.out))  # before a fit of minutes, not after
    # the engine first: the native one starts loading its programs while the CSV is read
    engine = make_engine(args.engine, r_brms_base_url=s.r_brms_base_url, r_brms_timeout_secs=s.r_brms_timeout_secs,
                         r_brms_internal_token=s.r_brms_internal_token, native=s.native)
    panel = Panel.from_frame(read_panel_csv(args.panel), score_range=s.score_range,
                             lookback_weeks=args.lookback_weeks)
    lookback = args.lookback_weeks or int(panel.week.max()) + 1
    settings = FitSettings(
        n_chains=s.n_chains if args.chains is None else args.chains,
        n_samples=s.n_samples if args.samples is None else args.samples,
        seed=s.seed if args.seed is None else args.seed,
        horizon_week=horizon_week(lookback, s.horizon_weeks if args.horizon_weeks is None else args.horizon_weeks),
        target=s.metrics_default_target if args.target is None else args.target,
        lookback_weeks=lookback,
    )
    result = fit_panel(engine, panel, settings)
    out.write_text(json.dumps(result.to_json(), indent=1))
    d = result.diagnostics
    p = result.students.P
    print(f"{result.run_id}: {result.n_students} students, max R-hat {d.max_rhat:.4f}, "
          f"min ESS bulk {d.min_ess_bulk:.0f}, {d.n_divergent} divergent; target {result.target:g} at week "
          f"{result.horizon_week}: P from {p.min():.3f} to {p.max():.3f} -> {args.out}")
    return 0


class _DefaultsShown(argparse.HelpFormatter):
    """--help with each option's default (when it has one that is not said already)."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if d is None or d is argparse.SUPPRESS or isinstance(d, bool) or "default" in h or not action.option_strings:
            return h
        return f"{h} (default: {d})"


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    fmt = _DefaultsShown  # every default in --help
    p = argparse.ArgumentParser(prog="growth-assets", description=__doc__.replace("``", ""), formatter_class=fmt)
    try:
        v = version("growth_assets")
    except PackageNotFoundError:  # a source tree that is not installed
        v = "unknown"
    p.add_argument("--version", action="version", version=f"growth-assets {v}")
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", formatter_class=fmt, help="the database: start/stop the local one, migrate DATABASE_URL")
    db.add_argument("action", choices=["start", "stop", "migrate", "url"])
    db.add_argument("--apply-source-changes", action="store_true",
                    help="migrate: also make the changes the platform's tables need (keys, indexes, columns)")
    db.add_argument("--dry-run", action="store_true", help="migrate: print the SQL, change nothing")
    db.add_argument("--check", action="store_true",
                    help="migrate: change nothing; exit 3 while a migration of the project's tables is pending "
                         "(a code server's init container waits on it)")
    db.set_defaults(func=cmd_db)

    sd = sub.add_parser("seed-demo", formatter_class=fmt, help="write a synthetic cohort into the source tables")
    sd.add_argument("--students", type=int, default=1000, help="students in the cohort")
    sd.add_argument("--weeks", type=int, default=12, help="complete weeks of history before --as-of's week")
    sd.add_argument("--seed", type=int, default=1, help="random seed of the cohort")
    sd.add_argument("--as-of", help="ISO date; the cohort covers the weeks before its week (default: the"
                    " latest weekly run's day, UTC: today, but on a Monday before 04:30 the day before)")
    sd.add_argument("--replace", action="store_true", help="delete an earlier demo cohort's rows first")
    sd.add_argument("--truth-out", help="CSV of each student's true line (default GROWTH_LOCAL_DIR/demo/"
                    "true_lines.csv; GROWTH_LOCAL_DIR's default: the project's .local)")
    sd.set_defaults(func=cmd_seed_demo)

    dm = sub.add_parser("demo", formatter_class=fmt, help="local database + synthetic cohort + the weekly graph")
    dm.add_argument("--students", type=int, default=500, help="students in the cohort")
    dm.add_argument("--weeks", type=int, default=None,
                    help="weeks of history (None: lookback + horizon, enough for one backtest)")
    dm.add_argument("--seed", type=int, default=1, help="random seed of the cohort")
    dm.add_argument("--as-of", help="ISO date: the run's day (default: the latest weekly run's day,"
                    " UTC: today, but on a Monday before 04:30 the day before)")
    dm.set_defaults(func=cmd_demo)

    dv = sub.add_parser("dev", formatter_class=fmt, help="the Dagster UI and daemon on the demo's database (dagster dev)")
    dv.add_argument("--host", default="127.0.0.1", help="the UI's address")
    dv.add_argument("--port", type=int, default=3000, help="the UI's port")
    dv.add_argument("--workspace", default="workspace.yaml", help="Dagster workspace (relative: the project's)")
    dv.set_defaults(func=cmd_dev)

    rs = sub.add_parser("r-service", formatter_class=fmt, help="run the R brms service in the foreground")
    rs.add_argument("--port", type=int, default=8080, help="the service's port")
    rs.add_argument("--host", default="127.0.0.1", help="the service's address")
    rs.set_defaults(func=cmd_r_service)

    pp = sub.add_parser("p", formatter_class=fmt, help="P of one student or a few, with the path it came from and why")
    pp.add_argument("--user", action="append", required=True, help="a user id (repeat for a few)")
    pp.add_argument("--target", type=float, help="in score units (default METRICS_DEFAULT_TARGET)")
    pp.add_argument("--horizon", help="the Monday of the week P is for (default: the latest run's)")
    pp.add_argument("--json", action="store_true", help="the answers as JSON")
    pp.set_defaults(func=cmd_p)

    ft = sub.add_parser("fit", formatter_class=fmt, help="fit a CSV panel (student_id,week,score) and write the spec JSON")
    ft.add_argument("--engine", choices=["native", "brms"], required=True, help="the engine that fits")
    ft.add_argument("--panel", required=True, help="CSV with student_id,week,score")
    ft.add_argument("--out", required=True, help="where the spec §8 JSON goes")
    ft.add_argument("--horizon-weeks", type=int, help="P is for this many weeks after the panel"
                    " (default BRMS_HORIZON_WEEKS)")
    ft.add_argument("--lookback-weeks", type=int, help="default: the panel's max week + 1")
    ft.add_argument("--target", type=float, help="the goal (default METRICS_DEFAULT_TARGET)")
    ft.add_argument("--chains", type=int, help="chains (default BRMS_N_CHAINS)")
    ft.add_argument("--samples", type=int, help="iterations per chain (default BRMS_N_SAMPLES)")
    ft.add_argument("--seed", type=int, help="the sampler's seed (default BRMS_SEED)")
    ft.set_defaults(func=cmd_fit)
    return p


def main(argv: list[str] | None = None) -> int:
    # the commands print their steps; libraries (alembic, JAX, Dagster) speak only to warn
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from .model.contract import ContractError
    from .settings import SettingsError

    try:
        return args.func(args)
    except (ContractError, SettingsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        # the R service's and the local cluster's errors are one line too (their modules are
        # imported only by the commands that use them: `fit` starts faster without psycopg)
        brms = sys.modules.get("growth_assets.model.brms_client")
        local = sys.modules.get("growth_assets.db.localpg")
        migrations = sys.modules.get("growth_assets.db.migrate")
        if migrations is not None and isinstance(e, migrations.MigrationError):
            print(f"error: migrations: {e}", file=sys.stderr)
            return 1
        if brms is not None and isinstance(e, brms.BrmsServiceError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        if local is not None and isinstance(e, local.LocalPgError):
            print(f"error: local database: {e}", file=sys.stderr)
            return 1
        raise
    except Exception as e:
        # a database's errors are one line, without DATABASE_URL's password (libpq's error for
        # a URL it cannot parse quotes the part it refused: the password, in the pod's log)
        pg = sys.modules.get("psycopg")
        if pg is not None and isinstance(e, pg.Error):
            print(f"error: database: {_without_password(' '.join(str(e).split()))}", file=sys.stderr)
            return 1
        raise


def _without_password(text: str) -> str:
    """``text`` without DATABASE_URL's password (``connection.without_password``)."""
    from .db.connection import without_password
    from .settings import Settings, SettingsError

    try:
        url = Settings.from_env().database_url or ""
    except SettingsError:
        url = ""
    return without_password(text, url)


if __name__ == "__main__":
    sys.exit(main())
