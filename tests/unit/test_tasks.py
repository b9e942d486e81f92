"""Task names are wire format: a queued job names its task, so names never change with the code."""
import time

import celery
import pytest
from django.db import OperationalError

from otp import tasks

# A job compares its code's expiry with the service's clock, which is the database's (core.clock).
pytestmark = pytest.mark.django_db


def test_task_names_are_explicit_and_stable():
    assert tasks.delivery_send.name == "otp.delivery_send"
    assert tasks.maintenance_run.name == "otp.maintenance_run"


def test_the_names_before_the_rename_are_still_registered():
    registered = celery.current_app.tasks
    for name in ("otp.delivery_send", "otp.maintenance_run", "otp.tasks.delivery_send_task", "otp.tasks.maintenance_run"):
        assert name in registered, name
    assert registered["otp.tasks.delivery_send_task"].acks_late and registered["otp.delivery_send"].acks_late


def test_beat_schedules_maintenance_by_its_stable_name(settings):
    assert {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()} == {"otp.maintenance_run"}


def test_both_message_formats_give_the_same_arguments():
    assert tasks._delivery_arguments(7, "123456", None) == (7, "123456", None)
    payload = {"v": 1, "delivery_id": 7, "code": "123456", "expires_at": 1.5, "a_later_field": "ignored"}
    assert tasks._delivery_arguments(None, None, payload) == (7, "123456", 1.5)


@pytest.fixture
def database_down(monkeypatch):
    from otp import services

    def unavailable(**kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(services, "delivery_send", unavailable)


def test_a_job_meeting_a_database_outage_after_its_code_expired_stops(database_down, caplog):
    payload = {"v": 1, "delivery_id": 1, "code": "123456", "expires_at": time.time() - 1}
    result = tasks.delivery_send.apply(kwargs={"payload": payload})
    assert result.state == "SUCCESS"
    assert "the code has expired: job dropped" in caplog.text and "trying again" not in caplog.text


def test_a_job_meeting_a_database_outage_while_its_code_lives_tries_again(database_down, caplog):
    payload = {"v": 1, "delivery_id": 1, "code": "123456", "expires_at": time.time() + 60}
    tasks.delivery_send.apply(kwargs={"payload": payload})
    assert "delivery 1: database unavailable (OperationalError), trying again in 0.5s" in caplog.text
    assert "job dropped" not in caplog.text


def test_a_payload_from_a_newer_release_is_put_back_not_misread(caplog):
    payload = {"v": 3, "delivery_id": 1, "sealed_otherwise": "...", "expires_at": time.time() + 60}
    with pytest.raises(tasks.PayloadVersionUnknown):
        tasks._delivery_arguments(None, None, payload)
    tasks.delivery_send.apply(kwargs={"payload": payload})
    assert "payload version 3 is newer than this worker reads: put back" in caplog.text


def test_a_job_run_in_process_keeps_the_request_id_of_the_request_that_enqueued_it(monkeypatch):
    # The quick run (no broker) runs each job in-process through Task.apply, which hands the message headers over
    # as request.headers instead of request attributes; the job's lines must still carry the request's id.
    from core.observability import REQUEST_ID_HEADER, request_id_current
    from otp import services

    seen = []
    monkeypatch.setattr(services, "delivery_send", lambda **kwargs: seen.append(request_id_current()))
    payload = {"v": 1, "delivery_id": 1, "code": "123456", "expires_at": time.time() + 60}
    tasks.delivery_send.apply(kwargs={"payload": payload}, headers={REQUEST_ID_HEADER: "req-42"})
    assert seen == ["req-42"]


def test_celerys_own_line_for_a_failed_job_carries_the_request_id():
    # Only the service's call was bound to the request's id: Celery's line for a job that raised, the one an
    # operator looks for first, carried "-" (noticed in an earlier session's logs).
    import logging

    from core.observability import REQUEST_ID_HEADER, RequestIdFilter

    records = []
    handler = logging.Handler()
    handler.addFilter(RequestIdFilter())
    handler.emit = records.append
    trace_logger = logging.getLogger("celery.app.trace")
    trace_logger.addHandler(handler)
    try:
        # A payload without its delivery id: the job raises KeyError, which nothing of ours catches.
        tasks.delivery_send.apply(kwargs={"payload": {"v": 2}}, headers={REQUEST_ID_HEADER: "req-43"})
    finally:
        trace_logger.removeHandler(handler)
    failures = [record for record in records if "KeyError" in record.getMessage()]
    assert failures and all(record.request_id == "req-43" for record in failures), records


def test_delivery_tasks_have_no_retry_limit_of_celerys_own():
    # Celery's default of 3 retries dropped a job meeting a longer database outage, a delivery's fourth transient
    # failure (OTP_SEND_MAX_RETRIES is 5), or a newer release's job waiting for a newer worker: the service bounds
    # the tries itself (otp.tasks).
    from otp.tasks import delivery_send, delivery_send_old_name

    assert delivery_send.max_retries is None and delivery_send_old_name.max_retries is None
