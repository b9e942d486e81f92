"""Prometheus metrics kept in Redis, so every API process and every worker adds to one set of figures.

Why Redis and a custom collector: prometheus_client's multiprocess mode needs one directory shared on one host,
and our workers run in other containers and hosts, so the figures live in Redis and the library only writes them out.

Counters and histograms are fields of one Redis hash, updated with HINCRBYFLOAT; each process adds up its
counts and writes them at most once a second (see _RedisStore), so figures lag by up to a second. /metrics
reads them back through StoreCollector (plus queue depths from the broker), and prometheus_client renders
them in its text format: names, escaping, HELP and TYPE lines and histogram series are the library's. Without
REDIS_URL (the quick local run) they are kept in this process.
"""
import atexit
import functools
import re
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping

import redis
from django.conf import settings
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from core.redis_failover import failover_retry

logger = logging.getLogger(__name__)

HASH_KEY = "otp:metrics"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A delivery takes from a fraction of a second to the code's whole life, retries included.
DELIVERY_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# generate_latest writes the classic text format, 0.0.4. The library's CONTENT_TYPE_LATEST announces 1.0.0, which
# the body does not need; its own exposition handler also answers 0.0.4 unless the scraper asks for 1.0.0.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

# name -> (type, help); every metric the service records, in one place. Counter names keep their `_total`:
# CounterMetricFamily strips it and generate_latest puts it back, so the exposed name is the one written here.
METRICS = {
    "http_requests_total": ("counter", "HTTP requests answered by the API, by method, route and status."),
    "http_request_duration_seconds": ("histogram", "Time the API took to answer, by route."),
    "otp_codes_issued_total": ("counter", "Codes issued, by channel and purpose."),
    "otp_codes_verified_total": ("counter", "Verify attempts, by result (success, failure, throttled)."),
    "otp_deliveries_total": ("counter", "Deliveries that reached a final state, by channel and status."),
    "otp_delivery_retries_total": ("counter", "Transient delivery failures that were retried, by channel."),
    "otp_delivery_seconds": ("histogram", "Time from a code's issue to its provider's acceptance, by channel."),
    "otp_sms_refused_total": ("counter", "SMS codes refused, by reason: the destination rules (non_geographic, "
                              "region, type), a spent send budget (budget_prefix, budget_global) or SMS turned off "
                              "(channel_off)."),
    "otp_email_refused_total": ("counter", "Email codes refused by a spent send budget, by reason (budget_domain, "
                                "budget_global) or email turned off (channel_off)."),
    "otp_email_suppressed_total": ("counter", "Recipients suppressed after a permanent 5xx at RCPT (event=added), and "
                                   "code emails not sent to a suppressed recipient (event=skipped)."),
}
# Gauges read when /metrics is scraped, from the sources apps register (gauge_source_register): name -> (help,
# label name).
GAUGES = {
    "otp_send_budget_used_ratio": ("Share (0 to 1) of each channel-wide send budget spent now, by budget (sms, "
                                   "email; sms_shared, email_shared: the part requests without a device token may "
                                   "spend).", "budget"),
    "otp_send_budget_soft_exceeded": ("1 while a channel-wide send budget is spent past OTP_SEND_BUDGET_SOFT_PERCENT "
                                      "(a warning before requests are refused), else 0, by budget.", "budget"),
}
_gauge_sources: list[Callable[[], Mapping[str, Mapping[str, float]]]] = []
# Histograms' bucket bounds, in seconds: LATENCY_BUCKETS unless named here.
HISTOGRAM_BUCKETS = {"otp_delivery_seconds": DELIVERY_BUCKETS}
QUEUE_DEPTH = ("otp_queue_depth", "Jobs waiting in each broker queue.")

# A stored field is `sample_name|key="value",...`: the name, then the labels sorted by key, values escaped
# as in Prometheus' text format so that the collector can split them back whatever they hold.
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_BUCKET_LABELS = {name: tuple((bound, f'le="{bound}"') for bound in HISTOGRAM_BUCKETS.get(name, LATENCY_BUCKETS))
                  for name, (kind, _) in METRICS.items() if kind == "histogram"}


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label_text(labels: dict) -> str:
    return ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(labels.items()))


def _parse_field(field: str) -> tuple[str, dict[str, str]]:
    name, _, label_text = field.partition("|")
    labels = {key: re.sub(r"\\.", lambda m: _UNESCAPE.get(m.group(0), m.group(0)), value)
              for key, value in _LABEL.findall(label_text)}
    return name, labels


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
    one pipeline a second instead of a dozen Redis commands per request (see docs/performance.md)."""

    FLUSH_SECONDS = 1.0

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1, retry=failover_retry())
        self.lock = threading.Lock()
        self.pending: dict[str, float] = defaultdict(float)
        threading.Thread(target=self._flush_forever, name="metrics-flush", daemon=True).start()
        atexit.register(self._flush_at_exit)

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

    def _flush_at_exit(self) -> None:
        try:
            self.flush()
        except redis.RedisError:
            pass  # Redis is gone too (a stack stopping): the last second's counts are lost, and nothing else

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


def gauge_source_register(read: Callable[[], Mapping[str, Mapping[str, float]]]) -> None:
    """Have /metrics call `read()` at each scrape: it returns {gauge name (a key of GAUGES): {label value: value}}.
    A source that raises is left out of that scrape (logged), never failing the others."""
    if read not in _gauge_sources:
        _gauge_sources.append(read)


@functools.cache
def _get_store():
    # Made on first use, in the process that records (a gunicorn or pool worker), never before a fork.
    return _RedisStore(settings.REDIS_URL) if settings.REDIS_URL else _LocalStore()


def metric_count(name: str, amount: float = 1, **labels) -> None:
    """Add `amount` to the counter `name` (a key of METRICS, `_total` included) for these label values.

    Labels are keyword arguments, label name -> value (any value; str() is exposed). The sum is kept in this
    process and written to Redis by the store's background flush (see _RedisStore), so metrics never slow or
    fail a request or a job. Returns None.
    """
    _get_store().add({f"{name}|{_label_text(labels)}": amount})


def metric_observe(name: str, seconds: float, **labels) -> None:
    """Record one observation of `seconds` (seconds) in the histogram `name` (a key of METRICS).

    Labels as for metric_count. Adds 1 to `{name}_count`, `seconds` to `{name}_sum` and 1 to every bucket (of
    HISTOGRAM_BUCKETS[name], else LATENCY_BUCKETS) whose bound is at or above the value, and to +Inf. Kept in
    memory like metric_count. Returns None.
    """
    text = _label_text(labels)
    prefix = f"{name}_bucket|{text}," if text else f"{name}_bucket|"
    increments = {f"{name}_count|{text}": 1, f"{name}_sum|{text}": seconds}
    # Buckets are stored cumulative, as Prometheus exposes them. The others get 0, so that every bucket exists
    # from the first observation on.
    for bound, le in _BUCKET_LABELS[name]:
        increments[prefix + le] = 1 if seconds <= bound else 0
    increments[prefix + 'le="+Inf"'] = 1
    _get_store().add(increments)


class StoreCollector(Collector):
    """Reads the metrics store (Redis, or this process without REDIS_URL) into prometheus_client families.

    `queue_depths` maps a broker queue name to the number of jobs waiting in it, read by the caller (an
    unreachable broker gives an empty mapping and no otp_queue_depth samples).
    """

    def __init__(self, queue_depths: Mapping[str, int]) -> None:
        self.queue_depths = queue_depths

    def collect(self) -> Iterator[Metric]:
        """Yield one family per entry of METRICS, in that order, then otp_queue_depth (a gauge per queue)."""
        samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for field, value in _get_store().read().items():
            name, labels = _parse_field(field)
            samples[name].append((labels, value))
        for name, (kind, help_text) in METRICS.items():
            if kind == "counter":
                yield _counter(name, help_text, samples[name])
            else:
                yield _histogram(name, help_text, samples[f"{name}_bucket"], samples[f"{name}_sum"])
        depth = GaugeMetricFamily(*QUEUE_DEPTH, labels=["queue"])
        for queue, jobs in sorted(self.queue_depths.items()):
            depth.add_metric([queue], jobs)
        yield depth
        gauges: dict[str, dict[str, float]] = defaultdict(dict)
        for read in _gauge_sources:
            try:
                for name, values in read().items():
                    gauges[name].update(values)
            except Exception as exc:  # a source's outage must not hide the other figures
                logger.warning("gauge source %s unavailable: %s", getattr(read, "__name__", read), exc)
        for name, (help_text, label) in GAUGES.items():
            if name in gauges:
                family = GaugeMetricFamily(name, help_text, labels=[label])
                for value_label, value in sorted(gauges[name].items()):
                    family.add_metric([value_label], value)
                yield family


def _label_names(label_sets) -> list[str]:
    # The union, so that a series recorded without some label shows it empty (which Prometheus reads as absent).
    return sorted({key for labels in label_sets for key in labels})


def _counter(name: str, help_text: str, samples) -> CounterMetricFamily:
    names = _label_names(labels for labels, _ in samples)
    family = CounterMetricFamily(name, help_text, labels=names)
    for values, value in sorted(([labels.get(key, "") for key in names], value) for labels, value in samples):
        family.add_metric(values, value)
    return family


def _histogram(name: str, help_text: str, buckets, sums) -> HistogramMetricFamily:
    series: dict[tuple, list[tuple[float, str, float]]] = defaultdict(list)
    for labels, value in buckets:
        labels = dict(labels)
        le = labels.pop("le", "+Inf")
        series[tuple(sorted(labels.items()))].append((float(le), le, value))
    names = _label_names(dict(key) for key in series)
    sum_of = {tuple(sorted(labels.items())): value for labels, value in sums}
    family = HistogramMetricFamily(name, help_text, labels=names)
    for key in sorted(series, key=lambda key: [dict(key).get(label, "") for label in names]):
        labels = dict(key)
        # _count is the +Inf bucket, as the library derives it; both are added in the same flush.
        family.add_metric([labels.get(label, "") for label in names],
                          [(le, value) for _, le, value in sorted(series[key])], sum_of.get(key, 0.0))
    return family


def metrics_render(*, queue_depths: Mapping[str, int]) -> bytes:
    """The /metrics body: every metric of the store plus `queue_depths` (queue name -> jobs waiting).

    Rendered by prometheus_client's generate_latest from a private registry (so no default collector, such as
    the process or GC ones, joins in); serve it with CONTENT_TYPE. Returns UTF-8 bytes.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(queue_depths))
    return generate_latest(registry)
