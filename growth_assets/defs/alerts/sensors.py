"""Alerts: every failed asset check and every failed run, POSTed as JSON to a webhook.

Open-source Dagster has no sensor for asset-check results, so one plain sensor reads the
instance through its public API: the runs that ended since the last tick
(``fetch_run_status_changes`` for success, failure and cancellation), the failed check
evaluations in each such run's event log (``all_logs``), and each run failure. The cursor
holds the last storage ids seen and a queue of alerts whose POST failed, retried on the
next tick rather than lost. The first tick starts from "now": old
failures are not replayed. With ``ALERT_WEBHOOK_URL`` unset the sensor skips, saying so.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import dagster as dg
import httpx
from pydantic import Field, model_validator

MAX_PENDING = 200
PAGE = 100


class AlertWebhook(dg.ConfigurableResource):
    """Where alerts go: a Slack-compatible incoming webhook (``ALERT_WEBHOOK_URL``)."""

    url: str | None = Field(None, description="ALERT_WEBHOOK_URL; unset disables alerts")
    webserver_url: str | None = Field(None, description="DAGSTER_WEBSERVER_URL, for links to runs")
    timeout_secs: float = Field(10.0, gt=0)
    # Dagster's daemon gives a sensor's evaluation 60 s (DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS) and
    # keeps the old cursor of a tick cut off: every alert that tick sent was sent again, tick
    # after tick. A POST starts only while its own timeout is left of this budget; the rest wait
    # in the cursor for the next tick
    tick_budget_secs: float = Field(30.0, gt=0, description="seconds of POSTs per sensor tick (< the daemon's 60)")

    @model_validator(mode="after")
    def _one_post_fits_a_tick(self) -> "AlertWebhook":
        # a POST starts only while its timeout fits in what is left of the budget: with a timeout
        # of the budget or more none ever started, and every alert waited until it was dropped
        if self.timeout_secs >= self.tick_budget_secs:
            raise ValueError(f"timeout_secs ({self.timeout_secs}) must be less than tick_budget_secs"
                             f" ({self.tick_budget_secs}): no POST would fit in a tick")
        return self

    def run_link(self, run_id: str) -> str | None:
        return f"{self.webserver_url.rstrip('/')}/runs/{run_id}" if self.webserver_url else None

    def post(self, payload: dict[str, Any]) -> None:
        """POST one alert; raises on a connection error, a non-2xx answer, or when the whole
        request takes more than ``timeout_secs``. The URL is taken without the whitespace
        around it (a secret made from a file ends in a newline).

        httpx's timeouts bound each connect, read and write on its own: a webhook (or a proxy)
        that answers a byte at a time held one POST for as long as it liked, the tick ran past
        the daemon's limit, and the daemon, keeping the old cursor, sent that tick's alerts
        again on every tick. The request is therefore cancelled at ``timeout_secs`` as a whole
        (httpx has no such timeout of its own: asyncio's ``wait_for`` around its async client)."""
        timeout = httpx.Timeout(self.timeout_secs, connect=min(5.0, self.timeout_secs))

        async def send() -> None:
            async with httpx.AsyncClient(timeout=timeout) as client:
                r = await client.post(self.url.strip(), json=payload)
                r.raise_for_status()

        try:
            asyncio.run(asyncio.wait_for(send(), self.timeout_secs))
        except TimeoutError:
            raise httpx.TimeoutException(f"the webhook did not answer within {self.timeout_secs} s") from None


def _json_value(v: Any) -> Any:
    """``v`` as JSON can carry it: a NaN or infinite number as null (JSON has none: httpx
    refuses them), a value JSON has no type for as its text."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return str(v)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def check_alert(run, ev, webhook: AlertWebhook) -> dict[str, Any]:
    """The payload of one failed check evaluation (``dg.AssetCheckEvaluation``) of a run."""
    md = {k: getattr(v, "value", v) for k, v in (ev.metadata or {}).items()}
    # a check of no partition (current_week_published) names the partition it judged in its metadata
    partition = getattr(ev, "partition", None) or run.tags.get("dagster/partition") or md.get("partition")
    severity = ev.severity.value if ev.severity else "ERROR"
    asset = ev.asset_key.to_user_string()
    # the threshold the observed value crossed: a WARN crossed the WARN one (the ERROR one, which
    # it did not cross, was named before)
    crossed = "warn_threshold" if severity == "WARN" and "warn_threshold" in md else "error_threshold"
    observed, threshold = md.get("observed"), md.get(crossed, md.get("threshold"))
    link = webhook.run_link(run.run_id)
    text = (f":rotating_light: [{severity}] check `{ev.check_name}` on `{asset}` failed"
            + (f" (partition {partition})" if partition else "")
            + f": observed {_fmt(observed)}, threshold {_fmt(threshold)}. {ev.description or ''}".rstrip()
            + f" Run {run.run_id}" + (f" <{link}|open>" if link else ""))
    return _json_value({"text": text, "kind": "asset_check_failed", "severity": severity, "asset": asset,
                        "check": ev.check_name, "observed": observed, "threshold": threshold,
                        "warn_threshold": md.get("warn_threshold"), "description": ev.description,
                        "partition": partition, "run_id": run.run_id, "run_url": link})


def run_alert(rec, webhook: AlertWebhook) -> dict[str, Any]:
    entry = rec.event_log_entry
    link = webhook.run_link(entry.run_id)
    job = entry.job_name
    message = entry.dagster_event.message if entry.dagster_event else ""
    text = (f":x: run {entry.run_id} of `{job}` failed: {message}"
            + (f" <{link}|open>" if link else ""))
    return _json_value({"text": text, "kind": "run_failed", "severity": "ERROR", "job": job,
                        "run_id": entry.run_id, "run_url": link, "message": message,
                        "record_id": rec.storage_id})


# a run's check results are read once the run has ended, whatever its outcome
_ENDED = {"success": dg.DagsterEventType.RUN_SUCCESS, "failure": dg.DagsterEventType.RUN_FAILURE,
          "canceled": dg.DagsterEventType.RUN_CANCELED}


def _failed_checks(instance, run_id: str):
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        ev = entry.dagster_event.event_specific_data
        if isinstance(ev, dg.AssetCheckEvaluation) and not ev.passed:
            yield ev


def _now_cursors(instance) -> dict[str, str | None]:
    out = {}
    for name, kind in _ENDED.items():
        res = instance.fetch_run_status_changes(kind, limit=1)
        out[name] = res.cursor if res.records else None
    return out


@dg.sensor(
    name="failure_alerts",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="POSTs every failed asset check and every failed run to ALERT_WEBHOOK_URL.",
)
def failure_alerts(context: dg.SensorEvaluationContext, alert_webhook: AlertWebhook):
    if not alert_webhook.url:
        context.log.info("ALERT_WEBHOOK_URL is not set: failure alerts are disabled")
        return dg.SkipReason("ALERT_WEBHOOK_URL is not set: failure alerts are disabled")
    instance = context.instance
    state = json.loads(context.cursor) if context.cursor else None
    if state is None:  # first tick: start from now, do not replay history
        state = {"ended": _now_cursors(instance), "pending": []}
        context.update_cursor(json.dumps(state))
        return dg.SkipReason("alerts start from now; earlier failures are not replayed")
    if "ended" not in state:  # an earlier release's cursor (its own run cursors): from now, its queue kept
        context.log.warning("alert cursor of an earlier release: runs are read from now on; %d queued alerts kept",
                            len(state.get("pending", [])))
        state = {"ended": _now_cursors(instance), "pending": list(state.get("pending", []))}

    pending: list[dict[str, Any]] = list(state.get("pending", []))
    for name, kind in _ENDED.items():
        res = instance.fetch_run_status_changes(kind, limit=PAGE, cursor=state["ended"].get(name),
                                                ascending=True)
        for rec in res.records:
            run = instance.get_run_by_id(rec.event_log_entry.run_id)
            if run is not None:
                pending.extend(check_alert(run, ev, alert_webhook) for ev in _failed_checks(instance, run.run_id))
            if kind == dg.DagsterEventType.RUN_FAILURE:
                pending.append(run_alert(rec, alert_webhook))
        if res.records:
            state["ended"][name] = res.cursor

    sent, failed, deferred = 0, [], []
    deadline = time.monotonic() + alert_webhook.tick_budget_secs - alert_webhook.timeout_secs
    for payload in pending:
        if time.monotonic() > deadline:  # this tick's time is spent: the next tick posts it
            deferred.append(payload)
            continue
        try:
            alert_webhook.post(payload)
            sent += 1
        except Exception as e:  # noqa: BLE001 - any error (a refused URL too) keeps the alert for a retry
            # and the tick goes on: the cursor is saved below, and the alerts after it are posted
            failed.append(payload)
            # the error's type only: its text can hold the URL, whose path is the webhook's secret
            context.log.warning("alert POST failed (%s); retrying on the next tick", type(e).__name__)
    waiting = failed + deferred  # the failed ones first: they are the older
    if len(waiting) > MAX_PENDING:  # the oldest go, and one alert (itself retried) says how many
        gone = waiting[:len(waiting) - MAX_PENDING + 1]
        n = sum(int(p.get("dropped", 0)) if p.get("kind") == "alerts_dropped" else 1 for p in gone)
        context.log.error("%d alerts could not be sent; dropping the oldest %d", len(waiting), n)
        waiting = [{"kind": "alerts_dropped", "severity": "ERROR", "dropped": n,
                    "text": f":warning: {n} alerts could not be sent to this webhook and were dropped"
                            " (the queue holds " + str(MAX_PENDING) + "): see the failed runs and checks"
                            " in Dagster"}] + waiting[len(gone):]
    state["pending"] = waiting
    context.update_cursor(json.dumps(state))
    if not pending:
        return dg.SkipReason("no new failures")
    context.log.info("sent %d alert(s), %d to retry, %d left for the next tick", sent, len(failed), len(deferred))
    return dg.SkipReason(f"sent {sent} alert(s), {len(failed)} to retry, {len(deferred)} for the next tick")
