"""``GET /metrics``: the timing model's and the server's figures as Prometheus text (``prometheus_client``).

Every replay server has a :class:`~prometheus_client.CollectorRegistry` of its own (several servers
share one process in tests) holding one collector that reads the figures when scraped: the timing
model's (:class:`~._timing.Metrics`, under vLLM's names, ``vllm:``) and the server's counters
(``replay:``). A fixed set of metrics, no labels: nothing grows with the requests served.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ._service import ReplayService
    from ._timing import Metrics

__all__ = ["CONTENT_TYPE", "model_families", "prometheus_text", "service_registry"]

#: The exposition format :func:`prometheus_client.generate_latest` writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_Row = tuple[str, Literal["counter", "gauge"], str, str]

#: (name after the prefix, kind, help, attribute of :class:`~._timing.Metrics`): vLLM's names.
_MODEL: tuple[_Row, ...] = (
    ("num_requests_running", "gauge", "Requests running on the (modelled) GPU.", "running"),
    ("num_requests_waiting", "gauge", "Requests waiting to be admitted.", "waiting"),
    ("generation_tokens_total", "counter", "Tokens generated.", "tokens_generated"),
    ("prompt_tokens_total", "counter", "Prompt tokens admitted.", "prompt_tokens"),
    (
        "prefix_cache_hits_total",
        "counter",
        "Prompt tokens found in the prefix cache.",
        "cached_prompt_tokens",
    ),
    (
        "prefix_cache_queries_total",
        "counter",
        "Prompt tokens looked up in the prefix cache.",
        "prompt_tokens",
    ),
    ("gpu_prefix_cache_hit_rate", "gauge", "Prefix-cache hit rate in tokens.", "prefix_cache_hit_rate"),
    ("gpu_cache_usage_perc", "gauge", "Fraction of KV memory in use.", "kv_usage"),
    ("num_requests_aborted_total", "counter", "Requests aborted (client disconnects).", "aborted"),
    ("num_requests_finished_total", "counter", "Requests that produced all their tokens.", "finished"),
    ("iterations_total", "counter", "Engine iterations.", "iterations"),
    ("busy_seconds_total", "counter", "Modelled seconds spent in iterations.", "busy_time_s"),
)

#: The same for the server's own counters (:class:`~._service.Counters`), named ``replay:...``.
_SERVER: tuple[_Row, ...] = (
    ("requests_total", "counter", "Generation requests received.", "requests"),
    ("requests_rejected_total", "counter", "Requests refused with an error.", "rejected"),
    ("probes_total", "counter", "Probe requests answered.", "probes"),
    ("client_disconnects_total", "counter", "Requests whose client went away early.", "disconnects"),
    ("streams_open", "gauge", "Streaming responses in progress.", "streams_open"),
)


def _families(rows: tuple[_Row, ...], source: object, prefix: str) -> Iterator[Metric]:
    for name, kind, help_text, attribute in rows:
        family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        yield family(f"{prefix}{name}", help_text, value=getattr(source, attribute))


def model_families(metrics: Metrics, prefix: str = "vllm:") -> Iterator[Metric]:
    """The timing model's figures as Prometheus metrics, under vLLM's names."""
    return _families(_MODEL, metrics, prefix)


class _Snapshot(Collector):
    """One timing-model snapshot (for :meth:`~._timing.Metrics.to_prometheus`)."""

    def __init__(self, metrics: Metrics, prefix: str) -> None:
        self.metrics, self.prefix = metrics, prefix

    def collect(self) -> Iterator[Metric]:
        return model_families(self.metrics, self.prefix)


class _ServiceCollector(Collector):
    """A replay server's figures, read at each scrape."""

    def __init__(self, service: ReplayService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        yield from model_families(self.service.driver.metrics())
        yield from _families(_SERVER, self.service.counters, "replay:")


def prometheus_text(metrics: Metrics, prefix: str = "vllm:") -> str:
    """A timing-model snapshot in Prometheus text exposition."""
    registry = CollectorRegistry()
    registry.register(_Snapshot(metrics, prefix))
    return generate_latest(registry).decode()


def service_registry(service: ReplayService) -> CollectorRegistry:
    """A registry of the service's own, serving its figures (render with ``generate_latest``)."""
    registry = CollectorRegistry()
    registry.register(_ServiceCollector(service))
    return registry
