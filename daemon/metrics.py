"""Prometheus metrics over HTTP: the daemon's counters read at scrape time, plus the model-call latency histogram.

Everything but the histogram is read from the stages' own counters when Prometheus scrapes, so the inference
loop pays nothing for metrics beyond one `observe()` per model call. Each daemon gets its own registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clapd.daemon.config import MetricsConfig
from clapd.daemon.output import Output
from clapd.daemon.runner import Runner

logger = logging.getLogger(__name__)

# Model calls take ~5 ms (a GPU, the demo model) to seconds (a full-size model on a small CPU, a big batch).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SOURCE_STATES = ("stopped", "running", "restarting", "finished", "failed")


class DaemonCollector(Collector):
    """Reads the runner's streams and events and the outputs' counters at every scrape."""

    def __init__(self, runner: Runner, outputs: Sequence[Output]) -> None:
        self._runner = runner
        self._outputs = list(outputs)

    def collect(self) -> Iterator[Metric]:
        yield from self._stream_metrics()
        yield from self._event_metrics()
        yield from self._publisher_metrics()

    def _stream_metrics(self) -> Iterator[Metric]:
        level = GaugeMetricFamily("clapd_input_level_dbfs", "RMS level of the last second", labels=["stream"])
        overruns = CounterMetricFamily("clapd_overruns", "Times audio was dropped before the model", labels=["stream"])
        windows = CounterMetricFamily("clapd_windows", "Windows by outcome", labels=["stream", "outcome"])
        outages = CounterMetricFamily("clapd_source_outages", "Times the source was lost", labels=["stream"])
        restarts = CounterMetricFamily("clapd_source_restarts", "Reopen or respawn attempts", labels=["stream"])
        state = GaugeMetricFamily("clapd_source_state", "1 for the source's current state", labels=["stream", "state"])
        for stats in self._runner.stream_stats():
            name = stats.name
            level.add_metric([name], stats.level_dbfs)
            overruns.add_metric([name], stats.source.overruns)
            windows.add_metric([name, "processed"], stats.windows.produced)
            windows.add_metric([name, "skipped"], stats.windows.skipped)
            outages.add_metric([name], stats.source.outages)
            restarts.add_metric([name], stats.source.restarts)
            for candidate in SOURCE_STATES:
                state.add_metric([name, candidate], float(stats.source.state == candidate))
        yield from (level, overruns, windows, outages, restarts, state)

    def _event_metrics(self) -> Iterator[Metric]:
        events = CounterMetricFamily("clapd_events", "Events by kind", labels=["stream", "detection", "kind"])
        for (stream, detection, kind), count in sorted(self._runner.events_by_kind.copy().items()):
            events.add_metric([stream, detection, kind], count)
        yield events

    def _publisher_metrics(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily("clapd_broker_connected", "1 while a broker session is up", labels=["publisher"])
        queued = GaugeMetricFamily("clapd_queue_depth", "Messages waiting on disk for the broker", labels=["publisher"])
        dropped = CounterMetricFamily("clapd_queue_dropped", "Messages thrown away", labels=["publisher"])
        auth = CounterMetricFamily("clapd_broker_auth_failures", "Refused credentials", labels=["publisher"])
        for output in self._outputs:
            stats = output.stats()
            if stats.connected is None:
                continue  # no broker behind this output
            name = output.name
            connected.add_metric([name], float(stats.connected))
            queued.add_metric([name], stats.queued)
            dropped.add_metric([name], stats.dropped)
            auth.add_metric([name], stats.auth_failures)
        yield from (connected, queued, dropped, auth)


class MetricsServer:
    """The HTTP endpoint; `close()` stops it."""

    def __init__(self, config: MetricsConfig, runner: Runner, outputs: Sequence[Output]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(DaemonCollector(runner, outputs))
        latency = Histogram(
            "clapd_inference_seconds",
            "Wall time of one batched model call",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        batch = Histogram(
            "clapd_inference_batch_windows",
            "Windows per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        runner.on_inference = _observer(latency, batch)
        try:
            self._server, self._thread = start_http_server(config.port, config.host, registry=self.registry)
        except OSError as e:
            raise OSError(f"metrics: cannot listen on {config.host}:{config.port} (metrics.port): {e}") from e
        self.port = self._server.server_port
        logger.info("metrics on http://%s:%d/metrics", config.host, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _observer(latency: Histogram, batch: Histogram) -> Callable[[float, int], None]:
    def observe(seconds: float, windows: int) -> None:
        latency.observe(seconds)
        batch.observe(windows)

    return observe
