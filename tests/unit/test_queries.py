"""The hand-written SQL of otp.queries writes every column of the models it inserts into, and PostgreSQL plans it
once per connection without losing the partial indexes it relies on."""
import re

import pytest

from otp import queries
from otp.models import Delivery, OneTimeCode


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


# --- The hot statements are planned once per connection (core.database.prepared_cursor) ----------------------------

def _hot_statements_run(address: str, times: int) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from otp.models import Purpose

    now = timezone.now()
    for _ in range(times):
        delivery = queries.code_store(address=address, channel="email", purpose=Purpose.LOGIN, provider="smtp",
                                      code_hash_hex="ab" * 32, now=now, expires_at=now + timedelta(seconds=600))
        assert queries.delivery_claim(delivery_id=delivery.id, now=now, lease_until=now + timedelta(seconds=30))
        assert queries.delivery_finish(delivery_id=delivery.id, status=Delivery.Status.SENT, now=now, sent_at=now)


def _prepared_statements() -> dict[str, str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT name, statement FROM pg_prepared_statements")
        return {statement: name for name, statement in cursor.fetchall()}


def _generic_plan(prepared_name: str, parameters: int) -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"EXPLAIN EXECUTE {prepared_name}({', '.join(['NULL'] * parameters)})")
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.django_db
def test_the_hot_statements_are_prepared_on_their_connection(email_address):
    # Parsing and planning each of the three statements of a login on every run cost PostgreSQL about a fifth of
    # their CPU (docs/performance-log.md); psycopg prepares a statement once it has run 5 times on a connection.
    _hot_statements_run(email_address.value, times=6)
    prepared = _prepared_statements()
    for fragment in ("WITH superseded AS", "attempts = attempts + 1", "provider = COALESCE("):
        assert any(fragment in statement for statement in prepared), (fragment, list(prepared))


@pytest.mark.django_db
def test_a_generic_plan_of_the_issue_statement_still_finds_active_codes_by_their_partial_index(email_address):
    # A prepared statement may be run with a plan made without its parameters' values. The issue statement's
    # supersede finds the address's active codes through otp_code_active_addr (WHERE status = 'active'): only a
    # statement that names 'active' itself can use that index in such a plan.
    _hot_statements_run(email_address.value, times=6)
    (statement, name), = [(s, n) for s, n in _prepared_statements().items() if "WITH superseded AS" in s]
    parameters = max(int(number) for number in re.findall(r"\$(\d+)", statement))
    assert "otp_code_active_addr" in _generic_plan(name, parameters=parameters)


@pytest.mark.django_db
def test_a_status_given_as_a_parameter_would_lose_the_partial_index():
    # Why the statuses are literals (otp.queries._literal): the same supersede with the status as a parameter.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("PREPARE supersede_by_parameter(text, text, boolean) AS "
                       f"UPDATE {queries.CODE_TABLE} SET status = 'superseded' "
                       "WHERE address = $1 AND status = $2 AND device = $3")
    try:
        assert "otp_code_active_addr" not in _generic_plan("supersede_by_parameter", parameters=3)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE supersede_by_parameter")
