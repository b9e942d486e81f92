"""Nothing is kept forever: delivery records (each with an address) go after OTP_DELIVERY_RETENTION_DAYS, in
batches that never scan the table; expired admin sessions and old admin sign-in records go too (contract:
Delivery)."""
from datetime import timedelta

import pytest
from axes.models import AccessLog
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from otp import services
from otp.models import Delivery

# Statements are counted here: clock_steady keeps the service's reading of the database's clock (core.clock) out.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("clock_steady")]


def deliveries_insert(count: int, *, created_from, address: str) -> None:
    """`count` sent delivery records, created one millisecond apart from `created_from`, as the API writes them
    (ids in the order of created_at)."""
    with connection.cursor() as cursor:
        cursor.execute(f"""
            INSERT INTO {Delivery._meta.db_table} (address, channel, purpose, provider, status, provider_id,
                provider_status, attempts, last_error, created_at, updated_at, sent_at, expires_at)
            SELECT %s || g || '@example.com', 'email', 'login', 'smtp', 'sent', 'id' || g, '', 1, '',
                   %s + g * interval '1 millisecond', %s, %s, %s + interval '2 minutes'
            FROM generate_series(1, %s) AS g""",
            [address, created_from, created_from, created_from, created_from, count])


def test_delivery_records_past_their_retention_are_deleted_in_batches_that_never_scan(settings):
    settings.OTP_DELIVERY_RETENTION_DAYS = 30
    now = timezone.now()
    deliveries_insert(30_000, created_from=now - timedelta(days=45), address="old")
    deliveries_insert(5_000, created_from=now - timedelta(days=29), address="kept")
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Delivery._meta.db_table}")  # what autovacuum does for a table this size

    with CaptureQueriesContext(connection) as statements:
        assert services.delivery_purge(batch_size=2_000) == 30_000
    assert Delivery.objects.count() == 5_000
    assert not Delivery.objects.exclude(address__startswith="kept").exists()

    # One DELETE of an id range a batch, plus three primary-key lookups; and no statement reads the whole table.
    assert len(statements) <= 4 * (30_000 // 2_000 + 1) + 1
    with connection.cursor() as cursor:
        for statement in statements.captured_queries:
            cursor.execute(f"EXPLAIN {statement['sql']}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Seq Scan" not in plan, (statement["sql"], plan)


def test_nothing_younger_than_the_retention_is_deleted(settings):
    settings.OTP_DELIVERY_RETENTION_DAYS = 7
    now = timezone.now()
    deliveries_insert(10, created_from=now - timedelta(days=6, hours=23), address="young")
    with CaptureQueriesContext(connection) as statements:
        assert services.delivery_purge() == 0 and Delivery.objects.count() == 10
    assert len(statements) == 3  # the lowest id, its age, and the count above: the usual run reads one row


def test_the_beat_job_deletes_old_deliveries_expired_sessions_and_old_admin_access_logs(settings):
    settings.OTP_DELIVERY_RETENTION_DAYS = 30
    deliveries_insert(3, created_from=timezone.now() - timedelta(days=31), address="old")
    expired, live = SessionStore(), SessionStore()
    expired.set_expiry(-60)
    expired.create()
    live.create()
    old_sign_in, recent_sign_in = (AccessLog.objects.create(ip_address="203.0.113.9", user_agent="x", username="admin")
                                   for _ in range(2))
    AccessLog.objects.filter(id=old_sign_in.id).update(attempt_time=timezone.now() - timedelta(days=31))

    result = services.maintenance_run()
    assert result["deliveries_deleted"] == 3 and result["sessions_deleted"] == 1
    assert list(Session.objects.values_list("session_key", flat=True)) == [live.session_key]
    assert result["admin_access_logs_deleted"] == 1
    assert list(AccessLog.objects.values_list("id", flat=True)) == [recent_sign_in.id]
