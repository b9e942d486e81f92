"""Which env file the settings read (config/settings.py), and how it is read, in one place for them and for
bin/quick-run, which reads API_PORT alone from it."""
import io
import os
import re
from pathlib import Path

import environ

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


_ENV_LINE = re.compile(r"(?:export )?([A-Za-z_][A-Za-z0-9_]*)=")


def env_file_read(path: str) -> dict[str, int]:
    """Put the settings of the `.env` file at `path` into the environment, where the environment does not set them
    already (django-environ's parser, overwrite=False), and return {name: line number}.

    Its lines are checked first, since the parser passed over what it could not read: a line that is not
    NAME=value (`export NAME=value` is one too; `OTP_TTL_SECONDS = 300`: the default was used, after a warning in
    plain text), a comment after a value or text after its closing quote (kept as part of the value), or a name
    set twice (the last silently won: a `DEBUG=true` appended to a production file) stops start-up with one line
    naming the setting and the line, never showing the value (it may be a secret). A UTF-8 byte order mark is read
    as one (it made the first line unreadable). Found by a careless-operator pass and a new-user pass.

    Raises SystemExit with that line. bin/quick-run reads `.env` through this too, for API_PORT: its own reading
    let a name set twice, a comment after the value or a line that is no setting through.
    """
    with open(path, encoding="utf-8-sig") as file:
        content = file.read()
    names: dict[str, int] = {}
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if match is None:
            name = line.split("=", 1)[0].strip()[:64] if "=" in line else "<no =>"
            raise SystemExit(f"Invalid line {number} of {path} ({name}): expected NAME=value, with nothing before "
                             f"the name and no space around the =.")
        value = line[match.end():].rstrip()
        quoted = len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]
        if (value[:1] in "'\"" and value and not quoted) or (not quoted and re.search(r"\s#", value)):
            # The parser kept a comment as part of the value (`SERVICE_NAME=Acme # brand` went into every Subject).
            raise SystemExit(f"Invalid line {number} of {path} ({match.group(1)}): a comment or text after the value; "
                             f"put the value in quotes if the # belongs to it.")
        if match.group(1) in names:
            raise SystemExit(f"Invalid setting {match.group(1)}: set twice in {path}, on lines "
                             f"{names[match.group(1)]} and {number}; keep one.")
        names[match.group(1)] = number
    environ.Env.read_env(io.StringIO(content), overwrite=False)
    return names
