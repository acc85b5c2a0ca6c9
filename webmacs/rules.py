"""Threshold rules (stub: implemented by the webhooks/rules issue)."""

from __future__ import annotations


class RuleEngine:
    def __init__(self, services) -> None:
        self.services = services

    async def load(self) -> None:
        pass

    def invalidate(self) -> None:
        pass

    def evaluate(self, last_values) -> None:
        pass
