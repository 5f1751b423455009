"""The HTTP server both stubs use: a client that hangs up before reading its answer (a health probe stopped
by SIGTERM, a benchmark client timing out) is normal for a server, and uvicorn, which the real vLLM and
LMCache servers run on, drops it silently. socketserver would print a traceback instead, which the
supervisor tests rightly treat as a crash."""
from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):  # BrokenPipeError, ConnectionResetError, ...
            return
        super().handle_error(request, client_address)


def built_versions() -> dict[str, str]:
    """The versions this stub stands in for: the versions.env of the entrypoint package it runs with (the image's
    installed package: the upgrade drill builds images with different pins), else the checkout's."""
    import importlib.util
    from pathlib import Path

    candidates = []
    spec = importlib.util.find_spec("entrypoint")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "versions.env")
    candidates.append(Path(__file__).resolve().parents[2] / "entrypoint" / "versions.env")
    for path in candidates:
        if path.exists():
            pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line
                     and not line.lstrip().startswith("#"))
            return {k.strip(): v.strip() for k, v in pairs}
    return {}
