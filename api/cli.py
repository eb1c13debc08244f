"""``lineguard serve`` (inspection API + dashboard) and ``lineguard tail`` (a verdict consumer)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

from lineguard.config import Settings


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from .app import create_app

    if args.host:
        settings.api.host = args.host
    if args.port is not None:
        settings.api.port = args.port
    if args.model_dir:
        settings.processor.model_dir = args.model_dir
    app = create_app(settings)  # loads the models; ConfigError without API keys
    # Bind here, so port 0 works and the real address can be printed once it is listening.
    family = socket.AF_INET6 if ":" in settings.api.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.api.host, settings.api.port))
    host, port = sock.getsockname()[:2]
    # Listening now: a client that connects before uvicorn runs waits in the backlog, never refused.
    sock.listen(512)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"serve: listening on http://{shown}:{port} (models={len(app.state.registry.loaded())}; "
          f"dashboard: http://{shown}:{port}/dashboard)", flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from .tail import register_tail

    p = sub.add_parser("serve", help="run the synchronous inspection API and the operator dashboard",
                       description="Serve POST /inspect/{product}, /models, /health, /metrics and the "
                                   "dashboard (/dashboard) with uvicorn. Needs at least one API key.")
    p.add_argument("--host", help="address to bind (default api.host)")
    p.add_argument("--port", type=int, help="port (default api.port; 0 = any free port)")
    p.add_argument("--model-dir", type=Path, help="folder of model folders (default processor.model_dir)")
    p.set_defaults(handler=run_serve)
    register_tail(sub)
