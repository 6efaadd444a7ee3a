"""Prometheus metrics over HTTP: the daemon's counters read at scrape time, plus the model-call latency histogram.

Everything but the histogram is read from the stages' own counters when Prometheus scrapes, so the inference
loop pays nothing for metrics beyond one `observe()` per model call. Each daemon gets its own registry.

The endpoint has no authentication (a warning is logged when it listens beyond loopback) and bounds what clients
can hold: at most `MAX_CONNECTIONS` connections are served at once, each by its own thread, and one that sends
nothing for `CONNECTION_TIMEOUT_SECONDS` is closed; a connection beyond the cap is answered 503 and closed at once.
So idle or slow clients can hold neither threads nor file descriptors that pipe commands and the spool need.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import MetricsHandler
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clapd.daemon.config import MetricsConfig
from clapd.daemon.output import Output
from clapd.daemon.runner import Runner

logger = logging.getLogger(__name__)

# Model calls take ~5 ms (a GPU, the demo model) to seconds (a full-size model on a small CPU, a big batch).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SOURCE_STATES = ("stopped", "running", "restarting", "finished", "failed")
MAX_CONNECTIONS = 8  # served at once; Prometheus needs one per scrape
CONNECTION_TIMEOUT_SECONDS = 5.0  # a connection silent this long (no request, or a stalled one) is closed
LISTEN_BACKLOG = 64  # connections the kernel holds until accepted (and then served or refused)
BUSY_RESPONSE = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class DaemonCollector(Collector):
    """Reads the runner's streams and events and the outputs' counters at every scrape."""

    def __init__(self, runner: Runner, outputs: Sequence[Output]) -> None:
        self._runner = runner
        self._outputs = list(outputs)

    def collect(self) -> Iterator[Metric]:
        yield from self._stream_metrics()
        yield from self._event_metrics()
        yield from self._publisher_metrics()
        yield from self._anomaly_metrics()
        yield from self._recorder_metrics()

    def _stream_metrics(self) -> Iterator[Metric]:
        level = GaugeMetricFamily("clapd_input_level_dbfs", "RMS level of the last second", labels=["stream"])
        overruns = CounterMetricFamily("clapd_overruns", "Times audio was dropped before the model", labels=["stream"])
        windows = CounterMetricFamily("clapd_windows", "Windows by outcome", labels=["stream", "outcome"])
        outages = CounterMetricFamily("clapd_source_outages", "Times the source was lost", labels=["stream"])
        restarts = CounterMetricFamily("clapd_source_restarts", "Reopen or respawn attempts", labels=["stream"])
        state = GaugeMetricFamily("clapd_source_state", "1 for the source's current state", labels=["stream", "state"])
        nonfinite = CounterMetricFamily(
            "clapd_nonfinite_samples", "Samples replaced by 0: NaN, infinite or absurdly large", labels=["stream"]
        )
        reanchors = CounterMetricFamily(
            "clapd_clock_reanchors", "Times a live stream's clock ran ahead of the wall clock", labels=["stream"]
        )
        for stats in self._runner.stream_stats():
            name = stats.name
            level.add_metric([name], stats.level_dbfs)
            overruns.add_metric([name], stats.source.overruns)
            windows.add_metric([name, "processed"], stats.windows.produced)
            windows.add_metric([name, "skipped"], stats.windows.skipped)
            windows.add_metric([name, "gated"], stats.windows.gated)  # of the processed: below min_level_dbfs
            outages.add_metric([name], stats.source.outages)
            restarts.add_metric([name], stats.source.restarts)
            nonfinite.add_metric([name], stats.nonfinite_samples)
            reanchors.add_metric([name], stats.clock_reanchors)
            for candidate in SOURCE_STATES:
                state.add_metric([name, candidate], float(stats.source.state == candidate))
        yield from (level, overruns, windows, outages, restarts, state, nonfinite, reanchors)

    def _event_metrics(self) -> Iterator[Metric]:
        events = CounterMetricFamily("clapd_events", "Events by kind", labels=["stream", "detection", "kind"])
        for (stream, detection, kind), count in sorted(self._runner.events_by_kind.copy().items()):
            events.add_metric([stream, detection, kind], count)
        yield events

    def _recorder_metrics(self) -> Iterator[Metric]:
        """Clips and history counters: `clapd_clips_written_total`, `clapd_history_windows_written_total`..."""
        for recorder in self._runner.recorders:
            for name, count in recorder.counters().items():
                what = f"{recorder.name}: {name.replace('_', ' ')}"
                counter = CounterMetricFamily(f"clapd_{recorder.name}_{name}", what)
                counter.add_metric([], count)
                yield counter

    def _anomaly_metrics(self) -> Iterator[Metric]:
        statuses = self._runner.anomaly_status()
        if not statuses:
            return
        score = GaugeMetricFamily("clapd_anomaly_score", "Last window's normalised anomaly score", labels=["stream"])
        size = GaugeMetricFamily("clapd_anomaly_bank_size", "Embeddings in the normal bank", labels=["stream"])
        updates = CounterMetricFamily(
            "clapd_anomaly_bank_updates", "Normal bank updates (learnt, admitted, reloaded)", labels=["stream", "kind"]
        )
        for status in statuses:
            if status.score is not None:
                score.add_metric([status.stream], status.score)
            size.add_metric([status.stream], status.bank_size)
            for kind, count in status.updates.items():
                updates.add_metric([status.stream, kind], count)
        yield from (score, size, updates)

    def _publisher_metrics(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily("clapd_broker_connected", "1 while a broker session is up", labels=["publisher"])
        queued = GaugeMetricFamily("clapd_queue_depth", "Messages waiting on disk for the broker", labels=["publisher"])
        dropped = CounterMetricFamily("clapd_queue_dropped", "Messages thrown away", labels=["publisher"])
        auth = CounterMetricFamily("clapd_broker_auth_failures", "Refused credentials", labels=["publisher"])
        set_aside = CounterMetricFamily(
            "clapd_queue_set_aside", "Unusable spool files moved aside at start", labels=["publisher"]
        )
        scores_dropped = CounterMetricFamily(
            "clapd_scores_dropped", "Scores messages not sent: no broker session (never queued)", labels=["publisher"]
        )
        for output in self._outputs:
            stats = output.stats()
            if stats.connected is None:
                continue  # no broker behind this output
            name = output.name
            connected.add_metric([name], float(stats.connected))
            queued.add_metric([name], stats.queued)
            dropped.add_metric([name], stats.dropped)
            auth.add_metric([name], stats.auth_failures)
            set_aside.add_metric([name], stats.spool_set_aside)
            scores_dropped.add_metric([name], stats.scores_dropped)
        yield from (connected, queued, dropped, auth, set_aside, scores_dropped)


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
            self._server = BoundedHTTPServer((config.host, config.port), _handler_for(self.registry))
        except OSError as e:
            raise OSError(f"metrics: cannot listen on {config.host}:{config.port} (metrics.port): {e}") from e
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        self.port = self._server.server_port
        logger.info("metrics on http://%s:%d/metrics", config.host, self.port)
        if not is_loopback(config.host):
            logger.warning(
                "metrics: listening on %s (metrics.host), beyond this machine; the endpoint has no authentication",
                config.host,
            )

    @property
    def refused(self) -> int:
        """Connections answered 503 because `MAX_CONNECTIONS` were being served."""
        return self._server.refused

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once; the handler's `timeout` closes silent ones.

    A connection beyond the cap is answered 503 and closed in the accepting thread, which never waits for a slot
    (so `shutdown()` is never held up)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self, address: tuple[str, int], handler: type[MetricsHandler], max_connections: int = MAX_CONNECTIONS
    ) -> None:
        self.address_family = _address_family(*address)
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.settimeout(0)
                request.send(BUSY_RESPONSE)
            except OSError:
                pass  # the client is gone, or not reading: it is closed either way
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _handler_for(registry: CollectorRegistry) -> type[MetricsHandler]:
    """prometheus-client's handler for `registry`, closing a connection silent for `CONNECTION_TIMEOUT_SECONDS`."""

    class Handler(MetricsHandler):
        timeout = CONNECTION_TIMEOUT_SECONDS  # on every read and write of the connection's socket

    Handler.registry = registry
    return Handler


def _address_family(host: str, port: int) -> socket.AddressFamily:
    """IPv6 for an IPv6 host (e.g. `::`), else IPv4."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return socket.AF_INET  # binding says what is wrong with the host
    return infos[0][0]


def is_loopback(host: str) -> bool:
    """Whether every address `host` stands for is a loopback address (an unresolvable name counts as not)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def _observer(latency: Histogram, batch: Histogram) -> Callable[[float, int], None]:
    def observe(seconds: float, windows: int) -> None:
        latency.observe(seconds)
        batch.observe(windows)

    return observe
