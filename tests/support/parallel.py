"""Running one piece of work in many threads at once, to find races."""
import threading


def run_in_parallel(count, work):
    """Start `count` threads on a barrier so they hit the server together; return their results in order.

    `work` is called with the thread's index. Each thread closes its own database connections when done.
    """
    from django.db import connections

    barrier = threading.Barrier(count)
    results = [None] * count

    def run(index):
        try:
            barrier.wait(timeout=10)
            results[index] = work(index)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return results
