"""Alerts: failed checks and failed runs to a webhook."""

from .sensors import AlertWebhook, failure_alerts

__all__ = ["AlertWebhook", "failure_alerts"]
