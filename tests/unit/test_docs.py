"""The project's own documents agree with the code: docs/api.md with the OpenAPI schema, .env.example with the
settings the README and config/settings.py name, and every link in them with a file of the checkout."""
import re

import pytest
from drf_spectacular.generators import SchemaGenerator

from tests.support.processes import BACKEND_DIR, REPO_DIR

API_DOC = (REPO_DIR / "docs" / "api.md").read_text()
README = (REPO_DIR / "README.md").read_text()


def section(markdown: str, heading: str) -> str:
    """The text under `heading` (a whole heading line) up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#{{1,{len(level)}}} |\Z)", markdown, flags=re.M | re.S)
    assert match, f"no {heading!r}"
    return match[1]


@pytest.fixture(scope="module")
def schema():
    return SchemaGenerator().get_schema(request=None, public=True)


def properties(schema, node) -> set[str]:
    """The property names of a schema object, following $ref into components."""
    while isinstance(node, dict) and "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = schema["components"]["schemas"][name]
    return set((node or {}).get("properties", {}))


def documented_endpoints() -> dict[tuple[str, str], str]:
    """(METHOD, path) -> the text of its section, from the `### METHOD /path` headings under "## Endpoints"."""
    endpoints = section(API_DOC, "## Endpoints")
    parts = re.split(r"^### ([A-Z]+) (/\S*)\n", endpoints, flags=re.M)
    return {(method, path): text for method, path, text in zip(parts[1::3], parts[2::3], parts[3::3])}


def schema_operations(schema) -> dict[tuple[str, str], dict]:
    return {(method.upper(), path): operation for path, operations in schema["paths"].items()
            for method, operation in operations.items()}


def status_rows(text: str) -> dict[str, str]:
    """Status -> the text of its rows (joined) in an endpoint's table."""
    rows: dict[str, str] = {}
    for status, row in re.findall(r"^\| (\d{3}) \|(.*)$", text, flags=re.M):
        rows[status] = rows.get(status, "") + row
    return rows


def test_the_reference_and_the_schema_name_the_same_endpoints(schema):
    documented, served = set(documented_endpoints()), set(schema_operations(schema))
    assert not served - documented, f"in the schema, not in docs/api.md: {sorted(served - documented)}"
    assert not documented - served, f"in docs/api.md, not in the schema: {sorted(documented - served)}"


def test_each_endpoint_lists_exactly_the_statuses_the_schema_gives(schema):
    operations = schema_operations(schema)
    for endpoint, text in documented_endpoints().items():
        assert set(status_rows(text)) == set(operations[endpoint]["responses"]), endpoint


def test_each_endpoint_names_the_fields_of_its_request_and_its_success_body(schema):
    operations = schema_operations(schema)
    for endpoint, text in documented_endpoints().items():
        operation = operations[endpoint]
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        wanted = properties(schema, body)
        line = re.search(r"^Request fields: (.*?)(?:\n\n|\Z)", text, flags=re.M | re.S)
        named = set(re.findall(r"`([a-z_]+)`", line[1])) if line else set()
        assert wanted == named, f"{endpoint}: request fields {sorted(named)} in docs/api.md, {sorted(wanted)} in the schema"
        for status, response in operation["responses"].items():
            if not status.startswith("2"):
                continue
            fields = properties(schema, response.get("content", {}).get("application/json", {}).get("schema"))
            row = status_rows(text)[status]
            for field in fields:
                assert f'"{field}"' in row, f"{endpoint} {status}: {field} is not shown"
            shown = set(re.findall(r'"([a-z_]+)":', row))
            assert shown <= fields, f"{endpoint} {status}: {sorted(shown - fields)} are not in the schema"


def test_the_readme_and_the_docs_link_only_to_files_in_the_checkout():
    for path in [REPO_DIR / "README.md", *sorted((REPO_DIR / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "../shared/" not in text, f"{path.name} points outside the checkout"
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


def env_example_names() -> set[str]:
    # A commented-out line counts: WEB_CONCURRENCY is listed so (gunicorn reads it itself, and stops on an empty one).
    text = (REPO_DIR / ".env.example").read_text()
    return set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", text, flags=re.M))


def test_env_example_lists_every_setting_the_readme_names():
    table = section(README, "## Settings")
    named = {name for row in re.findall(r"^\| [^|]+ \|(.*)\|$", table, flags=re.M)
             for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row)}
    assert {"WEB_CONCURRENCY", "POSTGRES_PASSWORD", "REDIS_PASSWORD", "SECRET_KEY"} <= named
    assert not named - env_example_names(), f"missing from .env.example: {sorted(named - env_example_names())}"


def test_env_example_says_public_base_url_follows_http_port():
    text = (REPO_DIR / ".env.example").read_text()
    comment = re.search(r"((?:^#.*\n)+)PUBLIC_BASE_URL=(.*)$", text, flags=re.M)
    assert comment and comment[2] == "" and "HTTP_PORT" in comment[1]


def test_public_base_url_left_empty_follows_http_port():
    import os
    import subprocess
    import sys

    script = "import django.conf; print(django.conf.settings.PUBLIC_BASE_URL)"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "PUBLIC_BASE_URL": "", "HTTP_PORT": "9090"}
    result = subprocess.run([sys.executable, "-c", script], cwd=BACKEND_DIR, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "http://localhost:9090", result.stderr
