"""`GET /metrics` in Prometheus' text format (prometheus_client, one registry per app): requests by route and
status and their latency, prompt and generated tokens and time to first token per model, and each resident
model's running and waiting requests, read when scraped."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OTHER_ROUTE = "other"  # the page's files and unknown paths, kept apart so the label set stays small


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "qwq_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "qwq_request_duration_seconds",
            "Time from a request's arrival to its last byte (a stream's end), by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "qwq_prompt_tokens", "Prompt tokens of the requests generated for", ["model"], registry=self.registry
        )
        self.generated_tokens = Counter("qwq_generated_tokens", "Tokens generated", ["model"], registry=self.registry)
        self.first_token = Histogram(
            "qwq_time_to_first_token_seconds",
            "Time from a request's submission to its first generated token",
            ["model"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.loads = Counter(
            "qwq_model_loads", "Model loads, by outcome (loaded, failed)", ["model", "outcome"], registry=self.registry
        )

    def watch(self, queues: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        """Report `queues()` — (model, running, waiting) for each resident model — on every scrape."""
        self.registry.register(_QueueCollector(queues))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _QueueCollector:
    def __init__(self, queues: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("qwq_requests_running", "Requests decoding now, per model", labels=["model"])
        waiting = GaugeMetricFamily("qwq_requests_waiting", "Requests waiting for a slot, per model", labels=["model"])
        loaded = GaugeMetricFamily("qwq_models_loaded", "Models resident now")
        count = 0
        for model, now_running, now_waiting in self.queues():
            running.add_metric([model], now_running)
            waiting.add_metric([model], now_waiting)
            count += 1
        loaded.add_metric([], count)
        yield from (running, waiting, loaded)


class CountRequests:
    """Pure ASGI middleware (outermost, so the edge's refusals count too): each response's status by route,
    and its latency up to the last body chunk. Routes are the app's paths; anything else is `other`."""

    def __init__(self, app, metrics: ServerMetrics, routes: Callable[[], set[str]]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    def _route(self, path: str) -> str:
        if path in self.routes():
            return path
        if path.startswith("/v1/models/"):
            return "/v1/models/{model_id}"
        return OTHER_ROUTE

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route = self._route(scope.get("path", ""))
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
