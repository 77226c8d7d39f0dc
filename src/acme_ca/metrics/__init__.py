"""Prometheus metrics: what acme-ca counts, and where a scrape reads it.

`acme_ca.metrics.recorder` is the recording side, low in the layering (it imports
prometheus_client and the bottom floor, no component): the front end, the RA and the
listeners record through the `Metrics` object the composition root gives them.
`acme_ca.metrics.exposition` is what the metrics listener answers, and
`acme_ca.metrics.run` the directory a `serve` run's processes share their values
through (prometheus_client's multiprocess mode).

This module imports nothing: `acme_ca.metrics.run` must be usable before
prometheus_client is first imported (docs/DEPLOYMENT.md, "Metrics").
"""
