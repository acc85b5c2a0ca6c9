"""Outgoing webhooks (stub: implemented by the webhooks/rules issue)."""

from __future__ import annotations


class WebhookDispatcher:
    def __init__(self, services) -> None:
        self.services = services

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def emit(self, event_type: str, payload: dict) -> None:
        pass

    def sensor_readings(self, last_values) -> None:
        pass
