"""The /metrics body, read back with prometheus_client's own parser: names, types and labels are pinned here."""
import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from core import metrics

# Exposed name (as on its TYPE line) -> (type, label names of its series). Dashboards and alerts use these:
# a change here is a change for operators.
EXPOSED = {
    "http_requests_total": ("counter", {"method", "route", "status"}),
    "http_request_duration_seconds": ("histogram", {"route"}),
    "otp_codes_issued_total": ("counter", {"channel", "purpose"}),
    "otp_codes_verified_total": ("counter", {"result"}),
    "otp_deliveries_total": ("counter", {"channel", "status"}),
    "otp_delivery_retries_total": ("counter", {"channel"}),
    "otp_delivery_seconds": ("histogram", {"channel"}),
    "otp_sms_refused_total": ("counter", {"reason"}),
    "otp_email_refused_total": ("counter", {"reason"}),
    "otp_email_suppressed_total": ("counter", {"event"}),
    "otp_queue_depth": ("gauge", {"queue"}),
    "otp_send_budget_used_ratio": ("gauge", {"budget"}),
    "otp_send_budget_soft_exceeded": ("gauge", {"budget"}),
}
SAMPLE_NAMES = {"counter": lambda name: {name}, "gauge": lambda name: {name},
                "histogram": lambda name: {f"{name}_bucket", f"{name}_count", f"{name}_sum"}}


@pytest.fixture
def store(monkeypatch):
    """A store of this test's own, so figures recorded elsewhere in the run do not show."""
    local = metrics._LocalStore()
    monkeypatch.setattr(metrics, "_get_store", lambda: local)
    return local


def record_one_of_each():
    metrics.metric_count("http_requests_total", method="POST", route="register/", status=202)
    metrics.metric_observe("http_request_duration_seconds", 0.03, route="register/")
    metrics.metric_count("otp_codes_issued_total", channel="email", purpose="register")
    metrics.metric_count("otp_codes_verified_total", result="success")
    metrics.metric_count("otp_deliveries_total", channel="sms", status="sent")
    metrics.metric_count("otp_delivery_retries_total", channel="sms")
    metrics.metric_observe("otp_delivery_seconds", 1.5, channel="sms")
    metrics.metric_count("otp_sms_refused_total", reason="region")
    metrics.metric_count("otp_email_refused_total", reason="budget_domain")
    metrics.metric_count("otp_email_suppressed_total", event="added")


def families(text: str) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_every_family_is_exposed_with_its_name_type_and_labels(store):
    record_one_of_each()
    text = metrics.metrics_render(queue_depths={"email": 2, "sms": 0, "maintenance": 0}).decode()

    type_lines = [line.split()[2:] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert type_lines == [[name, kind] for name, (kind, _) in EXPOSED.items()]  # no `_total_total`, in order
    parsed = families(text)
    for name, (kind, labels) in EXPOSED.items():
        family = parsed[name.removesuffix("_total") if kind == "counter" else name]
        assert family.type == kind
        assert {sample.name for sample in family.samples} == SAMPLE_NAMES[kind](name)
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    assert {sample.labels["queue"]: sample.value for sample in parsed["otp_queue_depth"].samples} == {
        "email": 2, "sms": 0, "maintenance": 0}


def test_histogram_buckets_are_cumulative_with_sum_and_count(store):
    for seconds in (0.003, 0.03, 0.3, 30):
        metrics.metric_observe("http_request_duration_seconds", seconds, route="verify-otp/")
    family = families(metrics.metrics_render(queue_depths={}).decode())["http_request_duration_seconds"]
    samples = {(sample.name, sample.labels.get("le")): sample.value for sample in family.samples}

    bounds = [str(bound) for bound in metrics.LATENCY_BUCKETS] + ["+Inf"]
    assert [le for name, le in samples if name.endswith("_bucket")] == bounds
    assert [samples["http_request_duration_seconds_bucket", le] for le in bounds] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4]
    assert samples["http_request_duration_seconds_count", None] == 4
    assert samples["http_request_duration_seconds_sum", None] == pytest.approx(30.333)


def test_counters_add_up_per_label_set(store):
    for status in (202, 202, 429):
        metrics.metric_count("http_requests_total", method="POST", route="login/", status=status)
    metrics.metric_count("otp_codes_verified_total", 3, result="failure")
    parsed = families(metrics.metrics_render(queue_depths={}).decode())

    assert {sample.labels["status"]: sample.value for sample in parsed["http_requests"].samples} == {"202": 2, "429": 1}
    assert [(sample.labels, sample.value) for sample in parsed["otp_codes_verified"].samples] == [
        ({"result": "failure"}, 3)]
    assert parsed["otp_deliveries"].samples == []  # declared families are exposed before their first sample


def test_label_values_are_escaped_and_read_back_unchanged(store):
    odd = 'a "quoted", back\\slashed\nvalue'
    metrics.metric_count("otp_codes_verified_total", result=odd)
    metrics.metric_observe("http_request_duration_seconds", 0.2, route=odd)
    parsed = families(metrics.metrics_render(queue_depths={}).decode())

    assert [sample.labels["result"] for sample in parsed["otp_codes_verified"].samples] == [odd]
    assert {sample.labels["route"] for sample in parsed["http_request_duration_seconds"].samples} == {odd}


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis")
def test_two_processes_add_to_the_same_figures_in_redis(monkeypatch):
    # Two stores stand for two processes (an API worker and a Celery worker): each adds in memory, then flushes.
    api, worker = metrics._RedisStore(settings.REDIS_URL), metrics._RedisStore(settings.REDIS_URL)
    api.add({'otp_deliveries_total|channel="email",status="sent"': 1})
    worker.add({'otp_deliveries_total|channel="email",status="sent"': 2})
    worker.flush()
    monkeypatch.setattr(metrics, "_get_store", lambda: api)  # /metrics is served by the API: it flushes its own

    family = families(metrics.metrics_render(queue_depths={}).decode())["otp_deliveries"]
    assert [(sample.labels, sample.value) for sample in family.samples] == [({"channel": "email", "status": "sent"}, 3)]


@pytest.mark.django_db
def test_a_sent_delivery_records_its_latency_and_a_login_without_account_is_not_a_failure(store, email_address):
    # The alerts (ops/prometheus/alerts.yml) page on failed deliveries and on slow ones: a login for an address
    # without an account is by design and counted apart, and the latency histogram has buckets up to a code's life.
    from datetime import timedelta

    from django.utils import timezone

    from otp.models import Delivery
    from otp.services import delivering
    from tests.support import factories

    sent = factories.issued_code(email_address)
    sent.expires_at = timezone.now() + timedelta(seconds=settings.OTP_TTL_SECONDS - 3)  # issued 3 s ago
    delivering.delivery_finish(delivery=sent, status=Delivery.Status.SENT, provider_id="p1", sent_at=timezone.now())
    login = factories.issued_code(email_address, purpose="login")
    delivering.delivery_finish(delivery=login, status=Delivery.Status.FAILED, last_error="No account for this address.",
                               outcome=delivering.NO_ACCOUNT_OUTCOME)
    parsed = families(metrics.metrics_render(queue_depths={}).decode())

    assert {sample.labels["status"]: sample.value for sample in parsed["otp_deliveries"].samples} == {
        "sent": 1, "no_account": 1}
    latency = {sample.labels["le"]: sample.value for sample in parsed["otp_delivery_seconds"].samples
               if sample.name.endswith("_bucket")}
    assert latency["2.5"] == 0 and latency["5.0"] == 1 and latency["300.0"] == 1  # about 3 s
