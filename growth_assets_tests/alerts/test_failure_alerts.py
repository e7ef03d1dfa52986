"""The alert sensor through Dagster's own sensor test context, posting to a real receiver."""

import json

import dagster as dg
import pytest

from growth_assets.defs import build_definitions
from growth_assets.defs.alerts import AlertWebhook, failure_alerts
from growth_assets.defs.growth import weekly_assets
from growth_assets.settings import Settings
from growth_assets_tests.support.graph import PARTITION, ReplayEngine, resources, seed_db
from growth_assets_tests.support.receiver import Receiver


def tick(instance, defs, url, cursor, webserver_url="http://dagster.example:3000"):
    ctx = dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor,
                                  resources={"alert_webhook": AlertWebhook(url=url, webserver_url=webserver_url)})
    out = failure_alerts(ctx)
    return out, ctx.cursor


def bad_run(instance, db_url):
    return dg.materialize(weekly_assets, partition_key=PARTITION, instance=instance, raise_on_error=False,
                          resources=resources(db_url, ReplayEngine(max_rhat=1.2, n_divergent=1)))


@pytest.fixture
def seeded(db_url):
    return seed_db(db_url, 30, seed=3)


def test_failed_checks_and_runs_are_posted_once_and_retried_when_the_post_fails(seeded):
    defs = build_definitions(Settings.from_env({}))
    with dg.instance_for_test() as instance, Receiver() as rx:
        old = bad_run(instance, seeded)  # before the sensor's first tick: never replayed
        assert not old.success
        out, cursor = tick(instance, defs, rx.url, None)
        assert isinstance(out, dg.SkipReason) and "not replayed" in out.skip_message
        assert rx.posts == []

        res = bad_run(instance, seeded)
        out, cursor = tick(instance, defs, rx.url, cursor)
        kinds = sorted((p["kind"], p.get("check", "")) for p in rx.posts)
        assert kinds == [("asset_check_failed", "divergent_transitions_below_threshold"),
                         ("asset_check_failed", "rhat_below_threshold"), ("run_failed", "")]
        rhat = next(p for p in rx.posts if p.get("check") == "rhat_below_threshold")
        assert (rhat["severity"], rhat["observed"], rhat["threshold"], rhat["asset"]) == ("ERROR", 1.2, 1.05, "brms_posterior")
        assert rhat["run_id"] == res.run_id and rhat["partition"] == PARTITION
        assert rhat["run_url"] == f"http://dagster.example:3000/runs/{res.run_id}"
        assert "[ERROR]" in rhat["text"] and "rhat_below_threshold" in rhat["text"]
        div = next(p for p in rx.posts if p.get("check") == "divergent_transitions_below_threshold")
        assert div["severity"] == "WARN"
        run = next(p for p in rx.posts if p["kind"] == "run_failed")
        assert run["run_id"] == res.run_id and "failed" in run["text"]

        # the next tick sends nothing new
        rx.posts.clear()
        out, cursor = tick(instance, defs, rx.url, cursor)
        assert rx.posts == [] and out.skip_message == "no new failures"

        # the receiver is down: nothing is lost, the alerts wait in the cursor
        rx.status = 503
        res2 = bad_run(instance, seeded)
        out, cursor = tick(instance, defs, rx.url, cursor)
        assert rx.posts == [] and len(json.loads(cursor)["pending"]) == 3
        rx.status = 200
        out, cursor = tick(instance, defs, rx.url, cursor)
        assert {p["run_id"] for p in rx.posts} == {res2.run_id} and len(rx.posts) == 3
        assert json.loads(cursor)["pending"] == []


def test_an_unset_url_disables_alerts_with_a_clear_reason():
    defs = build_definitions(Settings.from_env({}))
    with dg.instance_for_test() as instance:
        out, cursor = tick(instance, defs, None, None)
    assert out.skip_message == "ALERT_WEBHOOK_URL is not set: failure alerts are disabled"
    assert cursor is None


@dg.asset
def _fine():
    return 1


@dg.asset_check(asset=_fine)
def _nan_check():  # as the R-hat check grades a NaN R-hat: ERROR, observed NaN
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                               metadata={"observed": float("nan"), "error_threshold": 1.05})


@dg.asset
def _boom():
    raise RuntimeError("boom")


def test_a_failed_check_observing_nan_is_posted_and_does_not_stop_the_alerts_after_it():
    """httpx refuses NaN in JSON (ValueError, not an HTTPError): the tick raised before it saved
    its cursor, so every later tick posted the alerts before it again and never reached the
    ones after it (a failed run went unreported)."""
    with dg.instance_for_test() as instance, Receiver() as rx:
        _, cursor = tick(instance, None, rx.url, None)
        dg.materialize([_fine, _nan_check], instance=instance)
        out, cursor = tick(instance, None, rx.url, cursor)
        assert [p["check"] for p in rx.posts] == ["_nan_check"]
        assert rx.posts[0]["observed"] is None and "observed nan" in rx.posts[0]["text"]
        assert dg.materialize([_boom], instance=instance, raise_on_error=False).success is False
        out, cursor = tick(instance, None, rx.url, cursor)
        assert [p["kind"] for p in rx.posts] == ["asset_check_failed", "run_failed"]  # each once
        assert json.loads(cursor)["pending"] == []


def test_a_webhook_url_with_a_trailing_newline_still_delivers(monkeypatch):
    """A secret made from a file ends in a newline. The settings strip it, but the resource read
    the raw variable: httpx refused the URL (InvalidURL, not an HTTPError) and every tick
    raised, its cursor never saved."""
    with dg.instance_for_test() as instance, Receiver() as rx:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", rx.url + "\n")
        defs = build_definitions(Settings.from_env())
        webhook = defs.resources["alert_webhook"]
        ctx = dg.build_sensor_context(instance=instance, cursor=None, resources={"alert_webhook": webhook})
        failure_alerts(ctx)
        assert dg.materialize([_boom], instance=instance, raise_on_error=False).success is False
        ctx = dg.build_sensor_context(instance=instance, cursor=ctx.cursor, resources={"alert_webhook": webhook})
        failure_alerts(ctx)
        assert [p["kind"] for p in rx.posts] == ["run_failed"]
