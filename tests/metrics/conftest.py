"""The live-server fixtures of the multi-process tests (`acme-ca serve` processes stopped
by PID), for the metrics tests that scrape a real server."""

from __future__ import annotations

from tests.scale.conftest import cluster_factory

__all__ = ["cluster_factory"]
