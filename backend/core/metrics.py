"""Prometheus metrics kept in Redis, so every API process and every worker adds to one set of figures.

Counters and histograms are fields of one Redis hash, updated with HINCRBYFLOAT; each process adds up its
counts and writes them at most once a second (see _RedisStore), so figures lag by up to a second. /metrics
reads them back (plus queue depths from the broker) in Prometheus' text format. Without
REDIS_URL (the quick local run) they are kept in this process.
"""
import atexit
import functools
import threading
import time
from collections import defaultdict

import redis
from django.conf import settings

HASH_KEY = "otp:metrics"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# name -> (type, help); every metric the service records, in one place.
METRICS = {
    "http_requests_total": ("counter", "HTTP requests answered by the API, by method, route and status."),
    "http_request_duration_seconds": ("histogram", "Time the API took to answer, by route."),
    "otp_codes_issued_total": ("counter", "Codes issued, by channel and purpose."),
    "otp_codes_verified_total": ("counter", "Verify attempts, by result (success, failure, throttled)."),
    "otp_deliveries_total": ("counter", "Deliveries that reached a final state, by channel and status."),
    "otp_delivery_retries_total": ("counter", "Transient delivery failures that were retried, by channel."),
}


def _field(name: str, labels: dict, le: str | None = None) -> str:
    pairs = [f'{key}="{value}"' for key, value in sorted(labels.items())]
    if le is not None:
        pairs.append(f'le="{le}"')  # always last, so buckets sort by bound (see _bucket_order)
    return name + "|" + ",".join(pairs)


class _LocalStore:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, float] = defaultdict(float)

    def add(self, increments: dict[str, float]) -> None:
        with self.lock:
            for field, amount in increments.items():
                self.values[field] += amount

    def read(self) -> dict[str, float]:
        with self.lock:
            return dict(self.values)


class _RedisStore:
    """Adds up in this process and writes to Redis once per FLUSH_SECONDS from a background thread (and at exit):
    one pipeline a second instead of a dozen Redis commands per request, which cost about 1 ms a request."""

    FLUSH_SECONDS = 1.0

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self.lock = threading.Lock()
        self.pending: dict[str, float] = defaultdict(float)
        threading.Thread(target=self._flush_forever, name="metrics-flush", daemon=True).start()
        atexit.register(self.flush)

    def add(self, increments: dict[str, float]) -> None:
        with self.lock:
            for field, amount in increments.items():
                self.pending[field] += amount

    def _flush_forever(self) -> None:
        while True:
            time.sleep(self.FLUSH_SECONDS)
            try:
                self.flush()
            except redis.RedisError:
                pass  # kept for the next try

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, defaultdict(float)
        if not pending:
            return
        pipe = self.client.pipeline(transaction=False)
        for field, amount in pending.items():
            pipe.hincrbyfloat(HASH_KEY, field, amount)
        try:
            pipe.execute()
        except redis.RedisError:
            with self.lock:  # keep the counts for the next flush
                for field, amount in pending.items():
                    self.pending[field] += amount
            raise

    def read(self) -> dict[str, float]:
        self.flush()
        return {field.decode(): float(value) for field, value in self.client.hgetall(HASH_KEY).items()}


@functools.cache
def _get_store():
    # Made on first use, in the process that records (a gunicorn or pool worker), never before a fork.
    return _RedisStore(settings.REDIS_URL) if settings.REDIS_URL else _LocalStore()


def metric_count(name: str, amount: float = 1, **labels) -> None:
    """Add to a counter (in memory; see _RedisStore), so metrics never slow or fail a request or a job."""
    _get_store().add({_field(name, labels): amount})


def metric_observe(name: str, seconds: float, **labels) -> None:
    increments = {_field(f"{name}_count", labels): 1, _field(f"{name}_sum", labels): seconds}
    # Every bucket whose bound is at or above the value counts it: Prometheus' cumulative buckets, as stored.
    # The others get 0, so that every bucket exists from the first observation on.
    for bound in LATENCY_BUCKETS:
        increments[_field(f"{name}_bucket", labels, le=str(bound))] = 1 if seconds <= bound else 0
    increments[_field(f"{name}_bucket", labels, le="+Inf")] = 1
    _get_store().add(increments)


def metrics_render(*, queue_depths: dict[str, int]) -> str:
    """Prometheus text format 0.0.4."""
    values = _get_store().read()
    lines = []
    for name, (kind, help_text) in METRICS.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        prefixes = ([name] if kind == "counter" else [f"{name}_bucket", f"{name}_sum", f"{name}_count"])
        for prefix in prefixes:
            samples = sorted((field, value) for field, value in values.items() if field.split("|")[0] == prefix)
            if prefix.endswith("_bucket"):
                samples.sort(key=_bucket_order)
            lines += [f"{prefix}{{{field.split('|', 1)[1]}}} {value:g}" for field, value in samples]
    lines += ["# HELP otp_queue_depth Jobs waiting in each broker queue.", "# TYPE otp_queue_depth gauge"]
    lines += [f'otp_queue_depth{{queue="{queue}"}} {depth}' for queue, depth in sorted(queue_depths.items())]
    return "\n".join(lines) + "\n"


def _bucket_order(sample: tuple[str, float]) -> tuple[str, float]:
    labels, _, le = sample[0].rpartition(',le="')
    if not labels:  # a histogram without labels of its own
        labels, _, le = sample[0].rpartition('le="')
    le = le.rstrip('"')
    return labels, float("inf") if le == "+Inf" else float(le)
