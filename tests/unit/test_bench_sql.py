"""The bench (bench/run.py, not run by `make test`) seeds its tables with hand-written SQL: every column that
may not be NULL must be named there, or `make bench` fails halfway through its 18 minutes (as it did when codes
gained their `device` column)."""
import re

import pytest

from otp.models import OneTimeCode
from users.models import User
from tests.support.processes import REPO_DIR

BENCH = (REPO_DIR / "bench" / "run.py").read_text()


def _required_columns(model) -> set[str]:
    return {field.column for field in model._meta.concrete_fields if not field.primary_key and not field.null}


def _columns_named(table: str) -> list[set[str]]:
    # "INSERT INTO table (a, b, ...)" and "COPY table (a, b, ...)", whose lists the bench splits over lines.
    source = re.sub(r'"\s*\n\s*"', "", BENCH)
    return [{name.strip() for name in names.split(",")}
            for names in re.findall(rf"(?:INSERT INTO|COPY) {table} \(([^)]*)\)", source)]


@pytest.mark.parametrize("model", [OneTimeCode, User])
def test_each_bench_insert_names_every_column_that_may_not_be_null(model):
    statements = _columns_named(model._meta.db_table)
    assert statements, f"no INSERT or COPY into {model._meta.db_table} found in bench/run.py"
    for named in statements:
        assert _required_columns(model) <= named, _required_columns(model) - named
