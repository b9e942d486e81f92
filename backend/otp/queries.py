"""The hand-written SQL of the hot paths: issuing a code, claiming a delivery, finishing it, and loading the rows
those statements return. Every column these statements write is listed here, in CODE_INSERT_COLUMNS and
DELIVERY_INSERT_COLUMNS: a model that gains a column must gain it here too (tests/unit/test_queries.py fails
otherwise). Why raw SQL at all: docs/decisions.md.
"""
import re
from contextlib import contextmanager
from datetime import datetime

from django.db import connection, transaction

from otp.models import Delivery, OneTimeCode
from users.models import User

CODE_TABLE = OneTimeCode._meta.db_table
DELIVERY_TABLE = Delivery._meta.db_table
USER_TABLE = User._meta.db_table


def _literal(value: str) -> str:
    """A status constant of the models as an SQL string literal. The hot statements below are prepared on
    PostgreSQL (core.postgresql's prepared_cursor), and a generic plan uses a partial index only when the statement
    names the predicate's value itself, not as a parameter. Only the models' own lowercase constants are accepted,
    so no quoting is needed; raises ValueError otherwise."""
    if not re.fullmatch(r"[a-z_]+", value):
        raise ValueError(f"not a status constant: {value!r}")
    return f"'{value}'"


_ACTIVE, _SUPERSEDED = _literal(OneTimeCode.Status.ACTIVE.value), _literal(OneTimeCode.Status.SUPERSEDED.value)
_QUEUED, _SENDING = _literal(Delivery.Status.QUEUED.value), _literal(Delivery.Status.SENDING.value)

@contextmanager
def _hot_statement(sql: str, params):
    """Run one hot statement and yield its cursor, for fetchone() or rowcount: prepared on PostgreSQL
    (core.postgresql's prepared_cursor and prepared_execute), through Django's own cursor on SQLite (the quick
    run). Raises django.db.DatabaseError when the database does."""
    if connection.vendor == "postgresql":
        with connection.prepared_cursor() as cursor:
            connection.prepared_execute(cursor, sql, params)
            yield cursor
    else:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            yield cursor


# Column -> the SQL value the issue statement writes (a named parameter or a constant). The models' defaults
# are Python's, not the database's, so every column is given.
CODE_INSERT_COLUMNS: dict[str, str] = {
    "address": "%(address)s", "channel": "%(channel)s", "purpose": "%(purpose)s", "device": "%(device)s",
    "code_hash": "%(code_hash)s", "status": _ACTIVE, "attempts": "0", "created_at": "%(now)s",
    "expires_at": "%(expires_at)s", "used_at": "NULL",
    # The active code of the class it superseded in the same statement (at most one outside a race: the newest).
    "supersedes_id": "(SELECT max(id) FROM superseded)",
}
DELIVERY_INSERT_COLUMNS: dict[str, str] = {
    "address": "%(address)s", "channel": "%(channel)s", "purpose": "%(purpose)s", "provider": "%(provider)s",
    "status": _QUEUED, "provider_id": "''", "provider_status": "''", "attempts": "0", "last_error": "''",
    "created_at": "%(now)s", "updated_at": "%(now)s", "sent_at": "NULL", "expires_at": "%(expires_at)s",
    "lease_until": "NULL", "taken_over": "false",
}


def _insert(table: str, columns: dict[str, str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(columns.values())})"


# On PostgreSQL the three writes of an issue are one statement (data-modifying CTEs): one round trip and no
# transaction of its own, on the path of every /login/ and /register/. Its parts see one snapshot, so the
# UPDATE never sees the code the INSERT adds. A code supersedes only the codes of its own client class (`device`),
# so an address has at most two active codes (contract: One-time codes).
CODE_STORE_SQL = f"""
WITH superseded AS (
    UPDATE {CODE_TABLE} SET status = {_SUPERSEDED}
    WHERE address = %(address)s AND status = {_ACTIVE} AND device = %(device)s
    RETURNING id
), code AS (
    {_insert(CODE_TABLE, CODE_INSERT_COLUMNS)}
)
{_insert(DELIVERY_TABLE, DELIVERY_INSERT_COLUMNS)}
RETURNING id
"""


def delivery_loaded(**fields) -> Delivery:
    """A Delivery built from the values a statement just wrote or returned, loaded as a queryset loads a row:
    fields not given are deferred (read from the database if ever used), never filled with defaults."""
    names = [field.attname for field in Delivery._meta.concrete_fields if field.attname in fields]
    return Delivery.from_db(connection.alias, names, [fields[name] for name in names])


def code_store(*, address: str, channel: str, purpose: str, provider: str, code_hash_hex: str, now: datetime,
               expires_at: datetime, device: bool = False) -> Delivery:
    """Supersede the address's active codes of the client class `device` (True: asked for with a live device
    token), insert the new code's hash (with the id of the code it superseded, `supersedes_id`) and its queued
    delivery; return the delivery (id, address, channel, purpose, provider, status, timestamps loaded; the rest
    deferred).

    PostgreSQL: CODE_STORE_SQL, one statement in autocommit (inside an outer transaction its failure aborts
    that transaction). SQLite (the quick local run) has no data-modifying CTEs: the same writes in one
    transaction. Raises django.db.DatabaseError when the database does.
    """
    if connection.vendor == "postgresql":
        params = {"address": address, "channel": channel, "purpose": purpose, "device": device, "provider": provider,
                  "code_hash": code_hash_hex, "now": now, "expires_at": expires_at}
        with _hot_statement(CODE_STORE_SQL, params) as cursor:
            delivery_id = cursor.fetchone()[0]
        return delivery_loaded(id=delivery_id, address=address, channel=channel, purpose=purpose, provider=provider,
                               status=Delivery.Status.QUEUED, created_at=now, updated_at=now, expires_at=expires_at)
    with transaction.atomic():
        active = OneTimeCode.objects.filter(address=address, status=OneTimeCode.Status.ACTIVE, device=device)
        superseded = list(active.values_list("id", flat=True))
        active.update(status=OneTimeCode.Status.SUPERSEDED)
        OneTimeCode.objects.create(address=address, channel=channel, purpose=purpose, device=device,
                                   code_hash=code_hash_hex, created_at=now, expires_at=expires_at,
                                   supersedes_id=max(superseded, default=None))
        return Delivery.objects.create(address=address, channel=channel, purpose=purpose, provider=provider,
                                       created_at=now, expires_at=expires_at)


# Also returns whether an active account has the address, so a login delivery needs no second query. An address
# is an email or an E.164 number, never both, so one test covers both columns. A delivery its provider already
# reported on (a status callback) holds an accepted message: it is never claimed to be sent again. The text
# columns come back as text, whatever their declared length: the statement is prepared on each connection, and a
# migration that changed a returned column's type (a longer address) makes PostgreSQL refuse it there ("cached
# plan must not change result type"); prepared_execute then runs it unprepared, but that connection stops preparing.
DELIVERY_CLAIM_SQL = f"""
UPDATE {DELIVERY_TABLE} SET status = {_SENDING}, attempts = attempts + 1, updated_at = %(now)s,
    lease_until = %(lease_until)s, taken_over = taken_over OR status = {_SENDING}
WHERE id = %(id)s AND expires_at > %(now)s AND (status = {_QUEUED} OR (status = {_SENDING} AND lease_until < %(now)s))
    AND provider_status = ''
RETURNING id, CAST(address AS text), CAST(channel AS text), CAST(purpose AS text), expires_at, taken_over, attempts,
    EXISTS (
    SELECT 1 FROM {USER_TABLE} AS account WHERE account.is_active
    AND (account.email = {DELIVERY_TABLE}.address OR account.mobile = {DELIVERY_TABLE}.address)
) AS account_exists
"""

# What Django's converters need to turn a returned expires_at into a datetime as the ORM would.
_EXPIRES_AT_COLUMN = Delivery._meta.get_field("expires_at").get_col(DELIVERY_TABLE)


def delivery_claim(*, delivery_id: int, now: datetime, lease_until: datetime) -> Delivery | None:
    """Take a delivery for this run, if it is queued (or its holder's lease lapsed), its code still lives and
    its provider has not reported on it.

    Returns the delivery (status `sending`, with `account_exists`, `taken_over` and `attempts` set: this claim is
    try number `attempts`) or None when there was
    nothing to take. `taken_over` is true once any run took the delivery over from a `sending` holder whose lease had
    lapsed (the SET reads the row's status before the update): that holder may have handed it to the provider.
    One `UPDATE ... RETURNING` (PostgreSQL, and SQLite since 3.35) instead of a read and an update; Django's
    update() cannot return rows, hence the SQL.
    """
    as_sql = connection.ops.adapt_datetimefield_value  # what the ORM would send: SQLite stores text
    with _hot_statement(DELIVERY_CLAIM_SQL, {"id": delivery_id, "now": as_sql(now),
                                             "lease_until": as_sql(lease_until)}) as cursor:
        row = cursor.fetchone()
    if row is None:
        return None
    id_, address, channel, purpose, expires_at, taken_over, attempts, account_exists = row
    for convert in connection.ops.get_db_converters(_EXPIRES_AT_COLUMN):  # SQLite returns text, psycopg a datetime
        expires_at = convert(expires_at, _EXPIRES_AT_COLUMN, connection)
    delivery = delivery_loaded(id=id_, address=address, channel=channel, purpose=purpose, expires_at=expires_at,
                               status=Delivery.Status.SENDING, taken_over=bool(taken_over), attempts=attempts)
    delivery.account_exists = bool(account_exists)
    return delivery


DELIVERY_FINISH_SQL = (
    f"UPDATE {DELIVERY_TABLE} SET status = %s, lease_until = NULL, updated_at = %s, last_error = %s, "
    "provider_id = %s, provider = COALESCE(%s, provider), sent_at = %s "
    f"WHERE id = %s AND status IN ({_QUEUED}, {_SENDING})"
)


def delivery_finish(*, delivery_id: int, status: str, now: datetime, last_error: str = "", provider_id: str = "",
                    provider: str | None = None, sent_at: datetime | None = None) -> bool:
    """Move a queued or sending delivery to its final `status`; False when it was already final (never
    overwritten). `provider`, when given, records which provider handled it. Raises DatabaseError."""
    as_sql = connection.ops.adapt_datetimefield_value  # what the ORM would send: SQLite stores text
    with _hot_statement(DELIVERY_FINISH_SQL, [status, as_sql(now), last_error, provider_id, provider,
                                              as_sql(sent_at), delivery_id]) as cursor:
        return cursor.rowcount > 0
