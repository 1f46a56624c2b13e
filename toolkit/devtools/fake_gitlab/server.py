"""The fake GitLab's HTTP server: a threading http.server on 127.0.0.1 that hands each request to
`FakeGitLab.handle`.

Part of the fake GitLab (`toolkit.devtools.fake_gitlab`); standard library only.
"""

from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.devtools.fake_gitlab.world import GitLabWorld

logger = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    """Request threads are joined on close (`block_on_close`), so `close()` leaves no thread behind."""

    daemon_threads = False
    block_on_close = True
    fake: GitLabWorld  # a FakeGitLab: its REST API answers (rest.RestApi.handle)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so no idle keep-alive thread outlives close().
    protocol_version = "HTTP/1.0"
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        response = self.server.fake.handle(self.command, self.path, headers, body)
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        self.send_response(response.status)
        if response.body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake gitlab: " + format, *args)
