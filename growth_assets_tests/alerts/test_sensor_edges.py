"""The alert sensor at its edges (session 21's review: each test failed on the code before its
fix): an earlier release's cursor, a full queue, the publication check's partition, and a tick
that would outlast the daemon's time limit; session 23's: a webhook that answers a byte at a time."""

import json
import logging
import textwrap
import time
from types import SimpleNamespace
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
import dagster._grpc.client as grpc_client
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.load_target import PythonFileTarget
from dagster._daemon.sensor import execute_sensor_iteration

from growth_assets.defs import build_definitions
from growth_assets.defs.alerts import AlertWebhook, failure_alerts
from growth_assets.defs.alerts.sensors import MAX_PENDING, check_alert
from growth_assets.defs.growth.diagnostics import DiagnosticThresholds, evaluate
from growth_assets.model.result import Diagnostics
from growth_assets.settings import Settings
from growth_assets_tests.support.receiver import Receiver
from growth_assets_tests.support.slow_http import SlowAnswer


def tick(instance, url, cursor):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor,
                                  resources={"alert_webhook": AlertWebhook(url=url)})
    out = failure_alerts(ctx)
    return out, ctx.cursor


@dg.asset
def review_boom2():
    raise RuntimeError("boom")


def test_a_cursor_saved_by_the_previous_release_is_read(tmp_path):
    """a911a9d (the sensor's first release, "production instance") saved
    {"checks": {...}, "runs": ..., "pending": [...]}; 5329497 reads state["ended"] from any
    non-empty cursor: after an upgrade every tick raises KeyError before saving its cursor,
    so no alert is ever sent again (and the old pending alerts are never retried)."""
    old_cursor = json.dumps({"checks": {}, "runs": None,
                             "pending": [{"text": "queued before the upgrade", "kind": "run_failed"}]})
    with dg.instance_for_test() as instance, Receiver() as rx:
        assert dg.materialize([review_boom2], instance=instance, raise_on_error=False).success is False
        tick(instance, rx.url, old_cursor)  # raised KeyError: 'ended'
        assert any(p.get("text") == "queued before the upgrade" for p in rx.posts)


def test_alerts_dropped_beyond_the_queue_are_counted_in_an_alert_of_their_own():
    """README: "a POST that fails is kept in the cursor and retried on the next tick". With the
    webhook down, the queue was cut at MAX_PENDING and the oldest alerts dropped without a
    trace but a log line: now one queued alert says how many were dropped."""
    with dg.instance_for_test() as instance, Receiver() as rx:
        _, cursor = tick(instance, rx.url, None)
        state = json.loads(cursor)
        state["pending"] = [{"text": f"queued {i}", "kind": "run_failed", "run_id": f"r{i}"}
                            for i in range(MAX_PENDING)]
        assert dg.materialize([review_boom2], instance=instance, raise_on_error=False).success is False
        rx.status = 503
        _, cursor = tick(instance, rx.url, json.dumps(state))
        kept = json.loads(cursor)["pending"]
        assert len(kept) == MAX_PENDING
        assert kept[0]["kind"] == "alerts_dropped" and kept[0]["dropped"] == 2, kept[0]
        assert kept[1]["text"] == "queued 2" and kept[-1]["kind"] == "run_failed"
        rx.status = 200  # the webhook is back: the count goes out with the rest
        tick(instance, rx.url, cursor)
        assert any(p.get("kind") == "alerts_dropped" and p["dropped"] == 2 for p in rx.posts)


def test_the_unpublished_week_alert_names_its_partition():
    defs = build_definitions(Settings.from_env({}))
    job = defs.resolve_job_def("weekly_p_published_job")
    with dg.instance_for_test() as instance, Receiver() as rx:
        _, cursor = tick(instance, rx.url, None)
        res = job.execute_in_process(instance=instance, raise_on_error=False)
        evs = [e.event_specific_data for e in res.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert evs and not evs[0].passed
        key = evs[0].metadata["partition"].value
        tick(instance, rx.url, cursor)
        alert = next(p for p in rx.posts if p["kind"] == "asset_check_failed")
        print(alert)
        assert alert["partition"] == key, (alert["partition"], key)


@dg.asset
def review_boom():
    raise RuntimeError("boom")


DEFS = textwrap.dedent("""
    import os
    import dagster as dg
    from growth_assets.defs.alerts import AlertWebhook, failure_alerts

    defs = dg.Definitions(sensors=[failure_alerts],
                          resources={"alert_webhook": AlertWebhook(url=os.environ["ALERT_WEBHOOK_URL"],
                                                                   timeout_secs=1.5, tick_budget_secs=4.0)})
""")


def _ticks(instance, ctx):
    loc = next(iter(ctx.create_request_context().get_code_location_entries().values())).code_location
    repo = next(iter(loc.get_repositories().values()))
    sensor = repo.get_sensor("failure_alerts")
    return instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id)


def test_a_tick_never_outlasts_the_daemons_time_limit_so_each_alert_is_sent_once(tmp_path, monkeypatch):
    """Dagster's daemon gives a sensor 60 s and keeps the old cursor of a tick cut off: the
    sensor POSTed every alert in one tick and saved its cursor at the end, so a tick past the
    limit re-sent, tick after tick, every alert it had sent. Scaled down: a 6 s limit, a tick
    budget of 4 s, POSTs of 1 s (timeout 1.5 s), 6 alerts: over three ticks each goes once."""
    limit, delay, n_runs = 6, 1.0, 6
    monkeypatch.setattr(grpc_client, "DEFAULT_SENSOR_GRPC_TIMEOUT", limit)
    with Receiver() as rx:
        rx.delay = delay
        _sensor_ticks(tmp_path, monkeypatch, rx, n_runs, delay)


def _sensor_ticks(tmp_path, monkeypatch, rx, n_runs, delay):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", rx.url)
    (tmp_path / "review_defs.py").write_text(DEFS)
    log = logging.getLogger("review_alerts")
    t0 = datetime.now(timezone.utc)
    with dg.instance_for_test() as instance, create_test_daemon_workspace_context(
            PythonFileTarget(str(tmp_path / "review_defs.py"), "defs", str(tmp_path), None), instance) as ctx:
        with freeze_time(t0):
            list(execute_sensor_iteration(ctx, log, None, None))  # first tick: starts from now
        runs = [dg.materialize([review_boom], instance=instance, raise_on_error=False).run_id
                for _ in range(n_runs)]
        for i in (1, 2, 3):
            with freeze_time(t0 + timedelta(seconds=31 * i)):
                list(execute_sensor_iteration(ctx, log, None, None))
            time.sleep(n_runs * delay + 1)  # the abandoned evaluation finishes in the code server
        ticks = _ticks(instance, ctx)
        print([(t.status.value, (t.error.message[:90] if t.error else None)) for t in ticks])
        per_run = {r: sum(p["run_id"] == r for p in rx.posts) for r in runs}
        print("posts per failed run:", per_run, "total", len(rx.posts))
        # each failed run is alerted once (README: "POSTs ... every failed run")
        assert all(v == 1 for v in per_run.values()), per_run


def test_a_webhook_timeout_that_no_tick_budget_fits_is_refused_by_name():
    """A POST starts only while its timeout fits in what is left of the tick's budget: with
    timeout_secs >= tick_budget_secs none ever started, every alert waited in the cursor until
    the queue dropped it (found by review). Such a configuration is now refused."""
    import pydantic

    from growth_assets.defs.alerts import AlertWebhook

    with pytest.raises(pydantic.ValidationError, match=r"timeout_secs \(45.0\) must be less than tick_budget_secs"
                                                        r" \(30.0\)"):
        AlertWebhook(url="http://127.0.0.1:9/hook", timeout_secs=45.0)
    assert AlertWebhook(url="http://127.0.0.1:9/hook", timeout_secs=29.0, tick_budget_secs=30.0).timeout_secs == 29.0


def test_a_trickling_webhook_cannot_stretch_a_tick_past_its_budget():
    """README: "A tick posts for at most 30 s (AlertWebhook.tick_budget_secs; Dagster's daemon
    cuts a sensor off at 60 s and keeps its old cursor)". The budget assumes a POST ends within
    timeout_secs, but httpx's timeout is per connect/read/write operation: a webhook that answers
    slowly but steadily holds one POST far past it, the daemon cuts the tick off, and every alert
    of that tick is sent again on the next."""
    # ~40 bytes: ~12 s for one POST whose timeout is 1 s
    hook = SlowAnswer.trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", gap=0.3, path="/hook")
    wh = AlertWebhook(url=hook.url, timeout_secs=1.0, tick_budget_secs=2.0)
    with hook, dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, cursor=None, resources={"alert_webhook": wh})
        failure_alerts(ctx)  # first tick: starts from now
        state = json.loads(ctx.cursor)
        state["pending"] = [{"text": f"queued {i}", "kind": "run_failed", "run_id": f"r{i}"} for i in range(3)]
        ctx = dg.build_sensor_context(instance=instance, cursor=json.dumps(state), resources={"alert_webhook": wh})
        t0 = time.monotonic()
        failure_alerts(ctx)
        took = time.monotonic() - t0
        # the one POST that started was cancelled at its timeout, not read to its end
        sent = hook.finished()
    assert took <= wh.tick_budget_secs + 1.0, f"the tick took {took:.1f} s against a budget of {wh.tick_budget_secs} s"
    assert len(sent) == 1 and sent[0] < len(hook.steps), sent


def test_alert_of_a_warn_check_names_the_threshold_it_crossed():
    """README "Alerts": the sensor POSTs every failed check with its "severity, observed value,
    threshold". R-hat 1.02 fails the WARN threshold 1.01, not the ERROR one (1.05): the alert
    said "observed 1.02, threshold 1.05" (1.02 is below 1.05)."""
    rhat, _, _ = evaluate(Diagnostics(max_rhat=1.02, min_ess_bulk=1000.0, min_ess_tail=1000.0, n_divergent=0,
                                      n_max_treedepth=0), 4000, DiagnosticThresholds())
    assert not rhat.passed and rhat.severity == "WARN"
    ev = dg.AssetCheckEvaluation(asset_key=dg.AssetKey("brms_posterior"), check_name=rhat.check_name,
                                 passed=False, metadata={k: v for k, v in rhat.metadata().items()
                                                         if k != "description"},
                                 severity=dg.AssetCheckSeverity.WARN, description=rhat.description)
    run = SimpleNamespace(run_id="r1", tags={"dagster/partition": "2026-11-16"})
    payload = check_alert(run, ev, AlertWebhook(url="http://hook.test/x"))
    assert payload["threshold"] == 1.01, json.dumps(payload)[:400]
    assert "threshold 1.01" in payload["text"]
