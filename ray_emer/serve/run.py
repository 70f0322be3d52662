"""``ray-emer serve``: the application on an embedded Ray, until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import threading

from ray_emer.config import ConfigError
from ray_emer.serve.settings import ServeArgs, resolve_args
from ray_emer.progress import say


def serve_local(args: ServeArgs, log=say, port: int = 8000, host: str = "127.0.0.1") -> int:
    """Serve ``args.checkpoint`` on http://HOST:PORT until SIGINT/SIGTERM; returns the exit code."""
    # Ray, Ray Serve and FastAPI (through app) load here, not at import: the CLI parses `serve` flags without them
    import ray
    from ray import serve

    from ray_emer.serve.app import build_app

    if not args.checkpoint:
        raise ConfigError("serve needs --checkpoint (or checkpoint in the config)")
    args = resolve_args(args)  # a model URI that names nothing fails here, before Ray starts
    stop = threading.Event()
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own fatal SIGTERM handler
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(args), name="ray_emer", route_prefix="/")
        log(f"[serve] ray_emer on http://{host}:{port}/ (demo page), API under /v1; Ctrl-C stops")
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
