"""gunicorn settings for PeerBridge; command-line flags (bind, workers) override them."""

from smartapp.ops.memory import tune_allocator

# In the master as gunicorn reads this file, before the app is loaded or any thread starts: the
# allocator settings that keep a threaded worker's memory flat; the forked workers inherit them.
tune_allocator()

# Threads let one worker wait on the EHR for one user while serving another.
worker_class = "gthread"
threads = 8
timeout = 60
# Longer than a client or proxy keeps an idle connection (2 s default): otherwise a request sent
# on a connection gunicorn is just closing fails with a reset (seen in benchmarks/load.py).
keepalive = 75
graceful_timeout = 20
# Access lines would print full URLs (codes, state, launch handles); the app logs routes instead.
accesslog = None
errorlog = "-"
forwarded_allow_ips = "127.0.0.1"
# The app (imports, schema check, code maps, compiled templates) is loaded once in the master and
# shared by the forked workers: a worker starts in milliseconds and its first page is warm. Nothing
# opens a connection while the app is built, so no socket is shared across the fork.
preload_app = True


def post_fork(server: object, worker: object) -> None:
    """In each new worker: drop pooled connections the master held when it forked (see
    smartapp/ops/forking.py); the app is the preloaded one, shared by the fork."""
    from smartapp.ops.forking import forget_pools

    app = getattr(getattr(worker, "app", None), "callable", None)
    if app is not None:
        forget_pools(app)
