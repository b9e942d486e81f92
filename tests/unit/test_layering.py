"""The import rules that keep each concern in one place (docs/architecture.md)."""
import ast
from pathlib import Path

import pytest

BACKEND = Path(__file__).resolve().parents[2] / "backend"


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((BACKEND / "core").rglob("*.py")), ids=lambda path: path.name)
def test_core_never_imports_the_project_configuration(path):
    assert not any(name == "config" or name.startswith("config.") for name in _all_imports(path))


def test_tasks_import_the_services_only_inside_a_task_body():
    # Services import otp.tasks at top level to publish; the reverse at top level would be an import cycle.
    assert not any(name.startswith("otp.services") for name in _top_level_imports(BACKEND / "otp" / "tasks.py"))


def test_no_vendor_name_outside_its_provider_module():
    # The registry maps the setting's value to the module, the settings read the vendor's credentials by their
    # contract names, and the webhook's URL names the vendor that calls it.
    allowed = {BACKEND / "otp" / "providers" / "twilio.py", BACKEND / "otp" / "providers" / "registry.py",
               BACKEND / "config" / "settings.py", BACKEND / "otp" / "urls.py"}
    named = {path for path in BACKEND.rglob("*.py") if "twilio" in path.read_text().lower()}
    assert named <= allowed, sorted(str(path) for path in named - allowed)
