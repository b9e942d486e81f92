"""The hand-written SQL of otp.queries writes every column of the models it inserts into, and PostgreSQL plans it
once per connection without losing the partial indexes it relies on."""
import re
from datetime import timedelta

import psycopg
import pytest
from django.db import connection, utils
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from otp import queries
from otp.models import Delivery, OneTimeCode, Purpose
from tests.support.env import database_url


def _columns(model) -> set[str]:
    return {field.column for field in model._meta.concrete_fields if not field.primary_key}


@pytest.mark.parametrize("model, written", [
    (OneTimeCode, queries.CODE_INSERT_COLUMNS),
    (Delivery, queries.DELIVERY_INSERT_COLUMNS),
])
def test_the_raw_insert_writes_every_column_of_the_model(model, written):
    # The models' defaults are Python's: a column the INSERT leaves out would be NULL, or the INSERT would fail.
    assert set(written) == _columns(model)
    assert all(column in queries.CODE_STORE_SQL for column in written)


def test_a_column_the_insert_misses_is_caught(monkeypatch):
    from django.db import models

    field = models.CharField(max_length=8, default="", name="new_column")
    field.set_attributes_from_name("new_column")
    monkeypatch.setattr(Delivery._meta, "concrete_fields", (*Delivery._meta.concrete_fields, field))
    assert set(queries.DELIVERY_INSERT_COLUMNS) != _columns(Delivery)


@pytest.mark.django_db
def test_the_issue_statement_stores_the_provider_and_defers_what_it_did_not_return(email_address):
    from otp import services
    from otp.models import Purpose

    delivery = services.code_issue(address=email_address, purpose=Purpose.REGISTER)
    assert delivery.provider == "locmem"
    assert "provider_id" in delivery.get_deferred_fields()
    assert Delivery.objects.get(id=delivery.id).provider == "locmem"


# --- The hot statements are planned once per connection (core.postgresql's prepared_cursor) -----------------------

def _hot_statements_run(address: str, times: int) -> None:
    now = timezone.now()
    for _ in range(times):
        delivery = queries.code_store(address=address, channel="email", purpose=Purpose.LOGIN, provider="smtp",
                                      code_hash_hex="ab" * 32, now=now, expires_at=now + timedelta(seconds=600))
        assert queries.delivery_claim(delivery_id=delivery.id, now=now, lease_until=now + timedelta(seconds=30))
        assert queries.delivery_finish(delivery_id=delivery.id, status=Delivery.Status.SENT, now=now, sent_at=now)


def _prepared_statements() -> dict[str, str]:
    """The statements prepared on this test's connection: {statement text ($n parameters): name}."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, statement FROM pg_prepared_statements")
        return {statement: name for name, statement in cursor.fetchall()}


def _prepared(fragment: str) -> tuple[str, int]:
    """The name and the parameter count of the one prepared statement whose text holds `fragment`."""
    (statement, name), = [(text, name) for text, name in _prepared_statements().items() if fragment in text]
    return name, max(int(number) for number in re.findall(r"\$(\d+)", statement))


def _generic_plan(prepared_name: str, parameters: int, *settings: str) -> str:
    with connection.cursor() as cursor:
        for setting in ("plan_cache_mode = force_generic_plan", *settings):
            cursor.execute(f"SET LOCAL {setting}")
        cursor.execute(f"EXPLAIN EXECUTE {prepared_name}({', '.join(['NULL'] * parameters)})")
        return "\n".join(row[0] for row in cursor.fetchall())


_ISSUE, _CLAIM, _FINISH = "WITH superseded AS", "attempts = attempts + 1", "provider = COALESCE("


@pytest.mark.django_db
def test_the_hot_statements_are_prepared_on_their_connection(email_address):
    # Parsing and planning each of the three statements of a login on every run cost PostgreSQL about two fifths of
    # their CPU (docs/performance-log.md, ninth round); psycopg prepares a statement once it has run 5 times.
    _hot_statements_run(email_address.value, times=6)
    prepared = _prepared_statements()
    for fragment in (_ISSUE, _CLAIM, _FINISH):
        assert any(fragment in statement for statement in prepared), (fragment, list(prepared))


@pytest.mark.django_db
def test_a_generic_plan_of_the_issue_statement_still_finds_active_codes_by_their_partial_index(email_address):
    # A prepared statement may be run with a plan made without its parameters' values. The issue statement's
    # supersede finds the address's active codes through otp_code_active_addr (WHERE status = 'active'): only a
    # statement that names 'active' itself can use that index in such a plan.
    _hot_statements_run(email_address.value, times=6)
    assert "otp_code_active_addr" in _generic_plan(*_prepared(_ISSUE))


@pytest.mark.django_db
@pytest.mark.parametrize("fragment", [_CLAIM, _FINISH])
def test_generic_plans_of_the_claim_and_the_finish_reach_the_delivery_through_an_index(email_address, fragment):
    # Its key, or the partial index of pending deliveries while the statistics say those are few: either way no
    # plan made without the id reads the whole table. (A sequential scan would win on the test's near-empty table,
    # hence enable_seqscan off.)
    _hot_statements_run(email_address.value, times=6)
    plan = _generic_plan(*_prepared(fragment), "enable_seqscan = off")
    assert re.search(r"Index Scan using otp_delivery_(pkey|pending) on otp_delivery\b", plan), plan
    assert "Seq Scan on otp_delivery" not in plan


@pytest.mark.django_db
def test_a_status_given_as_a_parameter_would_lose_the_partial_index():
    # Why the statuses are literals (otp.queries._literal): the same supersede with the status as a parameter.
    with connection.cursor() as cursor:
        cursor.execute("PREPARE supersede_by_parameter(text, text, boolean) AS "
                       f"UPDATE {queries.CODE_TABLE} SET status = 'superseded' "
                       "WHERE address = $1 AND status = $2 AND device = $3")
    try:
        assert "otp_code_active_addr" not in _generic_plan("supersede_by_parameter", 3)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE supersede_by_parameter")


@pytest.mark.django_db
def test_the_query_log_shows_a_prepared_run_with_its_values(email_address):
    # psycopg keeps no text of a prepared run, where Django's log reads it (core.postgresql DatabaseOperations).
    _hot_statements_run(email_address.value, times=6)
    with CaptureQueriesContext(connection) as queries_run:
        _hot_statements_run(email_address.value, times=1)
    logged = [query["sql"] for query in queries_run.captured_queries]
    assert len(logged) == 3 and all(logged)
    assert f"address = '{email_address.value}'" in logged[0] and _ISSUE in logged[0]


@pytest.mark.django_db
def test_the_prepared_cursor_raises_djangos_errors():
    with pytest.raises(utils.DataError), connection.prepared_cursor() as cursor:
        cursor.execute("SELECT 1 / %s", [0])


@pytest.fixture
def migrating():
    """A connection of another process, as a migration's; this test's own connection is replaced afterwards, so the
    tests after it start with a fresh one."""
    with psycopg.connect(database_url(), autocommit=True) as other:
        yield other
    connection.connection.close()
    connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_migration_that_widens_a_returned_column_leaves_the_claim_prepared(email_address, migrating):
    # The claim returns its text columns as text (otp.queries.DELIVERY_CLAIM_SQL): a longer address does not change
    # its result's type, so the statement prepared on every open connection still fits.
    _hot_statements_run(email_address.value, times=6)
    length = Delivery._meta.get_field("address").max_length
    migrating.execute(f"ALTER TABLE {queries.DELIVERY_TABLE} ALTER COLUMN address TYPE varchar(320)")
    try:
        _hot_statements_run(email_address.value, times=2)
        assert connection.connection.prepare_threshold == 5  # still preparing
    finally:
        migrating.execute(f"ALTER TABLE {queries.DELIVERY_TABLE} ALTER COLUMN address TYPE varchar({length})")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("staleness", ["a returned column's type changed", "the statements deallocated"])
def test_a_prepared_statement_gone_stale_runs_again_unprepared(email_address, migrating, staleness):
    # PostgreSQL refuses a statement prepared before another process changed the type of a column it returns
    # ("cached plan must not change result type"), or one deallocated behind psycopg's back ("prepared statement
    # does not exist"): every delivery on that connection failed, its code answered 202 and never sent (found by a
    # new-user pass). prepared_execute runs it again unprepared and stops preparing on that connection.
    _hot_statements_run(email_address.value, times=6)
    if staleness == "the statements deallocated":
        connection.connection.pgconn.exec_(b"DEALLOCATE ALL")  # libpq directly: psycopg does not see it
        _hot_statements_run(email_address.value, times=2)
    else:
        migrating.execute(f"ALTER TABLE {queries.DELIVERY_TABLE} ALTER COLUMN expires_at TYPE timestamp")
        try:
            _hot_statements_run(email_address.value, times=2)
        finally:
            migrating.execute(f"ALTER TABLE {queries.DELIVERY_TABLE} ALTER COLUMN expires_at TYPE timestamptz")
    assert connection.connection.prepare_threshold is None


@pytest.mark.django_db
def test_inside_a_transaction_a_stale_prepared_statement_is_an_error():
    # The failed statement aborted the transaction: running it again there cannot work.
    now = timezone.now()
    args = dict(address="tx@example.com", channel="email", purpose=Purpose.LOGIN, provider="smtp",
                code_hash_hex="ab" * 32, now=now, expires_at=now + timedelta(seconds=600))
    for _ in range(6):
        queries.code_store(**args)
    connection.connection.pgconn.exec_(b"DEALLOCATE ALL")
    with pytest.raises(utils.ProgrammingError, match="does not exist"):
        queries.code_store(**args)
