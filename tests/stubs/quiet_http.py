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
