"""``ray-emer serve``: the application on an embedded Ray, until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading

from ray_emer.config import load_config


def serve_local(checkpoint: str, port: int = 8000, max_upload_mb: float = 50.0, host: str = "127.0.0.1",
                auth: bool = True, engine: str = "hf", config: str | None = None,
                overrides: list[str] | None = None) -> int:
    import ray
    from ray import serve

    from ray_emer.serve.app import ServeArgs, build_app

    flags = [f"checkpoint={checkpoint}", f"max_upload_mb={max_upload_mb}", f"auth={str(auth).lower()}",
             f"engine={engine}"]
    args = load_config(ServeArgs, config, flags + list(overrides or []))
    stop = threading.Event()
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own fatal SIGTERM handler
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(args), name="ray_emer", route_prefix="/")
        print(f"[serve] ray_emer on http://{host}:{port}/ (demo page), API under /v1; Ctrl-C stops",
              file=sys.stderr, flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
