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
    """The versions this stub stands in for: the image's entrypoint/versions.env (the upgrade drill builds
    images with different pins), or the checkout's when the stubs run from it."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for path in (here.parent / "entrypoint" / "versions.env", here.parents[1] / "entrypoint" / "versions.env"):
        if path.exists():
            pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line
                     and not line.lstrip().startswith("#"))
            return {k.strip(): v.strip() for k, v in pairs}
    return {}
