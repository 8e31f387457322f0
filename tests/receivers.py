"""Real receivers of notifications on loopback, for test_senders and test_alerts_real.

An HTTP receiver (http.server in a thread) that records webhook POSTs, refusing
any whose HMAC signature is wrong, and pings (GETs); an SMTP server (aiosmtpd)
that requires STARTTLS and a login, with a certificate made by openssl.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from vmcontroller.vocab import SIGNATURE_HEADER

USER, PASSWORD = "technician", "s3cret password"


@dataclass
class HttpReceiver:
    """Records what it was sent; answers 401 to a body whose signature is wrong.
    ``port`` 0 takes any free port; a given one lets a test start it late (a receiver
    that was down)."""

    secret: str | None
    port: int = 0
    posts: list[dict] = field(default_factory=list)
    gets: list[tuple[float, str]] = field(default_factory=list)  # (time.time(), path)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.secret is not None:
                    want = (
                        "sha256="
                        + hmac.new(receiver.secret.encode(), body, hashlib.sha256).hexdigest()
                    )
                    if not hmac.compare_digest(want, self.headers.get(SIGNATURE_HEADER, "")):
                        with receiver.lock:
                            receiver.refused += 1
                        self.send_response(401)
                        self.end_headers()
                        return
                with receiver.lock:
                    receiver.posts.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                with receiver.lock:
                    receiver.gets.append((time.time(), self.path))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def make_certificate(where: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (Debian: apt-get install openssl)")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


@dataclass
class Mailbox:
    messages: list[bytes] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's)
        self.messages.append(envelope.content)
        return "250 OK"


@dataclass
class SmtpServer:
    port: int
    cert: Path
    mailbox: Mailbox
    controller: Controller

    def stop(self) -> None:
        self.controller.stop()


def start_smtp(where: Path, port: int) -> SmtpServer:
    """An SMTP server on 127.0.0.1:port that takes mail only after STARTTLS and a login."""
    cert, key = make_certificate(where)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    mailbox = Mailbox()

    def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == USER
            and auth_data.password.decode() == PASSWORD
        )
        if ok:
            mailbox.logins.append(USER)
        return AuthResult(success=ok, handled=False)  # False: aiosmtpd answers 535 itself

    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
    )
    controller.start()
    return SmtpServer(port, cert, mailbox, controller)
