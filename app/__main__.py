"""`python -m app --store DIR --host H --port P`: flags override the environment's settings."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from app.api.connections import ConnectionLimits, bounded_protocol
from app.api.shutdown import DrainingServer
from app.core.config import Settings
from app.main import create_app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    p.add_argument("--store", type=Path, help="model store folder (STORE)")
    p.add_argument("--host", help="address to listen on (HOST)")
    p.add_argument("--port", type=int, help="port to listen on (PORT)")
    p.add_argument("--server", choices=("uvicorn", "granian"), help="HTTP server (SERVER)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="(DEVICE)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="(LOG_LEVEL)")
    args = p.parse_args(argv)
    overrides = {
        key: value
        for key, value in {
            "STORE": args.store,
            "HOST": args.host,
            "PORT": args.port,
            "SERVER": args.server,
            "DEVICE": args.device,
            "LOG_LEVEL": args.log_level,
        }.items()
        if value is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        print(f"error: bad setting:\n{e}", file=sys.stderr)
        return 2
    if settings.SERVER == "granian":  # its own bounds and signal handling (the module says)
        from app.api import granian_server

        app = create_app(settings)
        return granian_server.serve(settings, app, app.state.drain)
    limits = ConnectionLimits(
        head_timeout_s=settings.HEADER_TIMEOUT_SECONDS,
        max_head_bytes=settings.MAX_HEADER_BYTES,
        max_connections=settings.MAX_CONNECTIONS,
        max_lingering=settings.max_lingering(),
        access_log=settings.ACCESS_LOG,
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.HOST,
        port=settings.PORT,
        loop="uvloop",
        http=bounded_protocol(limits),  # httptools, with the bounds it lacks
        access_log=False,  # the app logs each request itself, as JSON
        log_level=settings.LOG_LEVEL,
        timeout_graceful_shutdown=math.ceil(settings.DRAIN_SECONDS),
    )
    # on SIGTERM: /ready 503 at once, then the requests in flight finish (app.api.shutdown)
    DrainingServer(config, app.state.drain, settings.DRAIN_SECONDS).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
