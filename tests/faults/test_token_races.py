"""One refresh token used concurrently through several gunicorn processes: exactly one use wins, whichever
process serves it, because the sign-in's row lock lives in PostgreSQL, not in a process."""
import pytest

from tests.support import factories
from tests.support.parallel import run_in_parallel
from users.services import token_pair_issue

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def api(base_env, stacks, private_redis):
    """Three gunicorn processes (the issue saw one winner per process) on a private Redis."""
    env = {**base_env, "REDIS_URL": private_redis.url, "OTP_IP_VERIFY_RATE": "100000/min"}
    return stacks(env, api_workers=3).start_api()


def test_eight_parallel_refreshes_across_processes_let_exactly_one_win(api):
    for round_ in range(3):
        tokens = token_pair_issue(user=factories.user(email=f"racer{round_}@example.com"))
        results = run_in_parallel(8, lambda i: api.post("/token/refresh/", {"refresh": tokens.refresh}))
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200] + [401] * 7, statuses
        assert all(r.json()["code"] == "token_not_valid" for r in results if r.status_code == 401)


def test_logout_racing_refreshes_across_processes_leaves_nothing_working(api):
    tokens = token_pair_issue(user=factories.user(email="racer@example.com"))
    results = run_in_parallel(6, lambda i: api.post("/logout/" if i == 0 else "/token/refresh/",
                                                    {"refresh": tokens.refresh}))
    assert results[0].status_code == 205
    for response in results[1:]:
        if response.status_code == 200:
            assert api.post("/token/refresh/", {"refresh": response.json()["refresh"]}).status_code == 401
        else:
            assert response.status_code == 401
