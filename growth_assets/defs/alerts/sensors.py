"""Alerts: every failed asset check and every failed run, POSTed as JSON to a webhook.

Open-source Dagster has no sensor for asset-check results, so one plain sensor reads the
instance's event storage: failed check executions (per check, by record id) and run-failure
events (by storage id). The cursor holds the last ids seen and a queue of alerts whose POST
failed, retried on the next tick rather than lost. The first tick starts from "now": old
failures are not replayed. With ``ALERT_WEBHOOK_URL`` unset the sensor skips, saying so.
"""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
import httpx
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from pydantic import Field

MAX_PENDING = 200
PAGE = 100


class AlertWebhook(dg.ConfigurableResource):
    """Where alerts go: a Slack-compatible incoming webhook (``ALERT_WEBHOOK_URL``)."""

    url: str | None = Field(None, description="ALERT_WEBHOOK_URL; unset disables alerts")
    webserver_url: str | None = Field(None, description="DAGSTER_WEBSERVER_URL, for links to runs")
    timeout_secs: float = Field(10.0, gt=0)

    def run_link(self, run_id: str) -> str | None:
        return f"{self.webserver_url.rstrip('/')}/runs/{run_id}" if self.webserver_url else None

    def post(self, payload: dict[str, Any]) -> None:
        """POST one alert; raises on a connection error or a non-2xx answer."""
        timeout = httpx.Timeout(self.timeout_secs, connect=min(5.0, self.timeout_secs))
        r = httpx.post(self.url, json=payload, timeout=timeout)
        r.raise_for_status()


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _partition(instance, rec, ev) -> str | None:
    """The check's partition: on the record, the evaluation, or the run's partition tag."""
    if rec.partition or getattr(ev, "partition", None):
        return rec.partition or ev.partition
    run = instance.get_run_by_id(rec.run_id)
    return run.tags.get("dagster/partition") if run else None


def check_alert(instance, rec, webhook: AlertWebhook) -> dict[str, Any]:
    ev = rec.event.dagster_event.asset_check_evaluation_data
    partition = _partition(instance, rec, ev)
    md = {k: getattr(v, "value", v) for k, v in (ev.metadata or {}).items()}
    severity = ev.severity.value if ev.severity else "ERROR"
    asset = ev.asset_key.to_user_string()
    observed, threshold = md.get("observed"), md.get("error_threshold", md.get("threshold"))
    link = webhook.run_link(rec.run_id)
    text = (f":rotating_light: [{severity}] check `{ev.check_name}` on `{asset}` failed"
            + (f" (partition {partition})" if partition else "")
            + f": observed {_fmt(observed)}, threshold {_fmt(threshold)}. {ev.description or ''}".rstrip()
            + f" Run {rec.run_id}" + (f" <{link}|open>" if link else ""))
    return {"text": text, "kind": "asset_check_failed", "severity": severity, "asset": asset,
            "check": ev.check_name, "observed": observed, "threshold": threshold,
            "warn_threshold": md.get("warn_threshold"), "description": ev.description,
            "partition": partition, "run_id": rec.run_id, "run_url": link, "record_id": rec.id}


def run_alert(rec, webhook: AlertWebhook) -> dict[str, Any]:
    entry = rec.event_log_entry
    link = webhook.run_link(entry.run_id)
    job = entry.job_name
    message = entry.dagster_event.message if entry.dagster_event else ""
    text = (f":x: run {entry.run_id} of `{job}` failed: {message}"
            + (f" <{link}|open>" if link else ""))
    return {"text": text, "kind": "run_failed", "severity": "ERROR", "job": job, "run_id": entry.run_id,
            "run_url": link, "message": message, "record_id": rec.storage_id}


def _new_check_failures(instance, key, after: int) -> list:
    out, cursor = [], None
    while True:
        page = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=PAGE, cursor=cursor, status={AssetCheckExecutionRecordStatus.FAILED})
        fresh = [r for r in page if r.id > after]
        out.extend(fresh)
        if len(page) < PAGE or len(fresh) < len(page):
            return sorted(out, key=lambda r: r.id)
        cursor = page[-1].id


def _latest_check_id(instance, key) -> int:
    page = instance.event_log_storage.get_asset_check_execution_history(
        key, limit=1, status={AssetCheckExecutionRecordStatus.FAILED})
    return page[0].id if page else 0


def _latest_run_failure(instance) -> str | None:
    res = instance.fetch_run_status_changes(dg.DagsterEventType.RUN_FAILURE, limit=1)
    return res.cursor if res.records else None


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
    check_keys = sorted(context.repository_def.asset_graph.asset_check_keys, key=str)
    state = json.loads(context.cursor) if context.cursor else None
    if state is None:  # first tick: start from now, do not replay history
        state = {"checks": {str(k): _latest_check_id(instance, k) for k in check_keys},
                 "runs": _latest_run_failure(instance), "pending": []}
        context.update_cursor(json.dumps(state))
        return dg.SkipReason("alerts start from now; earlier failures are not replayed")

    pending: list[dict[str, Any]] = list(state.get("pending", []))
    for key in check_keys:
        if str(key) not in state["checks"]:  # a check added since: it too starts from now
            state["checks"][str(key)] = _latest_check_id(instance, key)
            continue
        after = int(state["checks"][str(key)])
        for rec in _new_check_failures(instance, key, after):
            pending.append(check_alert(instance, rec, alert_webhook))
            after = rec.id
        state["checks"][str(key)] = after
    runs = instance.fetch_run_status_changes(dg.DagsterEventType.RUN_FAILURE, limit=PAGE,
                                             cursor=state.get("runs"), ascending=True)
    for rec in runs.records:
        pending.append(run_alert(rec, alert_webhook))
    if runs.records:
        state["runs"] = runs.cursor

    sent, failed = 0, []
    for payload in pending:
        try:
            alert_webhook.post(payload)
            sent += 1
        except httpx.HTTPError as e:
            failed.append(payload)
            context.log.warning("alert POST failed (%s); retrying on the next tick", type(e).__name__)
    if len(failed) > MAX_PENDING:
        context.log.error("%d alerts could not be sent; dropping the oldest %d", len(failed), len(failed) - MAX_PENDING)
        failed = failed[-MAX_PENDING:]
    state["pending"] = failed
    context.update_cursor(json.dumps(state))
    if not pending:
        return dg.SkipReason("no new failures")
    context.log.info("sent %d alert(s), %d waiting for a retry", sent, len(failed))
    return dg.SkipReason(f"sent {sent} alert(s), {len(failed)} to retry")
