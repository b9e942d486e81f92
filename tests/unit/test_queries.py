"""The hand-written SQL of otp.queries writes every column of the models it inserts into."""
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
