"""The client examples of docs/examples/, run against the native stack through nginx as their users would run
them: the curl script with the code read from the delivered email, and the browser client in Chromium
(tests/e2e/test_browser_client.py)."""
import os
import subprocess

import pytest

from tests.e2e.test_quick_run import code_from_console, quick_run  # noqa: F401 (the `make run` fixture)
from tests.support.processes import REPO_DIR
from tests.support.smtp import code_from_email
from tests.support.waiting import free_port, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CURL_SIGNIN = REPO_DIR / "docs" / "examples" / "curl-signin.sh"


def test_the_curl_example_signs_in_refreshes_and_logs_out_with_no_token_pasted(stack, inbox):
    script = subprocess.Popen(["bash", str(CURL_SIGNIN), "Curl-Example@Example.com"], cwd=REPO_DIR,
                              env={**stack.env, "BASE_URL": stack.url}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The script waits on its standard input for the code, as it would for a person at the terminal.
        code = code_from_email(inbox.wait_for_message("curl-example@example.com"))
        typed = f"{code[:3]} {code[3:]}\n"  # as a person copies it from a mail that groups the digits
        out, err = script.communicate(typed, timeout=60)
    finally:
        script.kill()
    assert script.returncode == 0, f"{out}\n{err}"
    lines = out.splitlines()
    assert lines[0] == "A code is on its way by email; it expires in 120 s."
    assert lines[1] == "Signed in; the access token lasts 300 s."
    assert lines[2].startswith("Profile: {") and '"email":"curl-example@example.com"' in lines[2]
    assert lines[3:] == ["Refreshed; the profile still answers with the new access token.", "Logged out.",
                         "The refresh token is refused after logout: token_not_valid.",
                         "So is the access token: token_not_valid."]
    assert err == "Code: "  # the prompt, on standard error; no token was printed anywhere
    assert "eyJ" not in out


def test_the_curl_example_stops_with_the_apis_words_on_a_wrong_code(stack, inbox):
    script = subprocess.run(["bash", str(CURL_SIGNIN), "curl-typo@example.com"], cwd=REPO_DIR, input="000000\n",
                            env={**stack.env, "BASE_URL": stack.url}, capture_output=True, text=True, timeout=60)
    assert script.returncode == 1
    assert script.stderr.endswith('verify failed: HTTP 400 {"detail":"Invalid or expired code.","code":"invalid_code"}\n')


def test_the_curl_example_says_what_to_start_when_nothing_answers():
    # Run without BASE_URL while only `make run` was up, it stopped on curl's "Failed to connect to 127.0.0.1 port
    # 8080" alone (a newcomer pass).
    url = f"http://127.0.0.1:{free_port()}"
    script = subprocess.run(["bash", str(CURL_SIGNIN), "nobody@example.com"], cwd=REPO_DIR, input="",
                            env={"PATH": os.environ["PATH"], "BASE_URL": url}, capture_output=True, text=True,
                            timeout=60)
    assert script.returncode == 7
    assert script.stderr.splitlines()[-1] == (f"Nothing answers at {url}: start the service (make up), or set "
                                              f"BASE_URL to where it runs (BASE_URL=http://127.0.0.1:8000 for make "
                                              f"run).")


def test_the_readmes_curl_command_signs_in_on_the_quick_run(quick_run):
    """The README's line, as written but for the port, against `make run`, the code read off its console."""
    url, server, _, _ = quick_run
    readme = (REPO_DIR / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "docs/examples/curl-signin.sh alice@" in line)
    command = command.replace("http://127.0.0.1:8000", url)
    script = subprocess.Popen(["sh", "-c", command], cwd=REPO_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        code = wait_for(lambda: "To: alice@example.com" in server.log()
                        and code_from_console(server.log(), "alice@example.com"), message="the email on the console")
        out, err = script.communicate(f"{code}\n", timeout=60)
    finally:
        script.kill()
    assert script.returncode == 0, f"{out}\n{err}"
    assert out.splitlines()[-2:] == ["The refresh token is refused after logout: token_not_valid.",
                                     "So is the access token: token_not_valid."]
