"""Which env file the settings read (config/settings.py), in one place for them and for bin/quick-run, which reads
API_PORT alone from it."""
import os
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent.parent


def env_file_path() -> str:
    """The env file to read, as an absolute path, or "" for none.

    ENV_FILE unset: the checkout's `.env` if there is one. ENV_FILE empty: none (the test suite's choice, so a
    developer's own `.env` cannot change what the tests see). Otherwise ENV_FILE's file, a relative path read from
    the checkout's root whatever directory the process starts in (`make up` runs the settings from backend/,
    `make run` from the root).

    Raises SystemExit with one line naming ENV_FILE when it names no file: it was passed over in silence, and
    start-up then stopped on an unrelated setting the file would have set (an attack pass).
    """
    given = os.environ.get("ENV_FILE")
    if given is None:
        return str(REPO_DIR / ".env") if (REPO_DIR / ".env").is_file() else ""
    if not given:
        return ""
    path = REPO_DIR / given  # an absolute ENV_FILE stays as it is
    if not path.is_file():
        raise SystemExit(f"Invalid setting ENV_FILE={given!r}: expected a file; {path} is none (a relative path is "
                         f"read from {REPO_DIR}).")
    return str(path)
