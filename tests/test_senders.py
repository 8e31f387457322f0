"""The senders against real receivers on loopback: an SMTP server (aiosmtpd) that
requires STARTTLS and a login, with a certificate the test makes with openssl, and
an HTTP receiver (http.server in a thread) that checks the webhook's HMAC. Then
`vmcontroller notify test` through both, and through a receiver that is down."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest
from cli_invoke import invoke, isolated, shown  # noqa: F401 (isolated: an autouse fixture)
from libvirt_env import free_port
from receivers import PASSWORD, USER, HttpReceiver, SmtpServer, start_smtp

from vmcontroller.alerts import Message
from vmcontroller.senders import DeliveryError, Email, Ping, Webhook, signature
from vmcontroller.vocab import ALERT_TEST

SECRET = "webhook-secret-for-the-test"
MESSAGE = Message(
    "0b6f-test", "artwork", (ALERT_TEST,), "[artwork] test message", ("one", "two"), "t"
)


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver(SECRET).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def smtp_server(tmp_path) -> Iterator[SmtpServer]:
    server = start_smtp(tmp_path, free_port())
    yield server
    server.stop()


def email_to(server: SmtpServer, **kw) -> Email:
    return Email(
        host="127.0.0.1",
        port=server.port,
        sender="vm@museum.example",
        to=("technician@museum.example", "curator@museum.example"),
        user=kw.pop("user", USER),
        password=kw.pop("password", PASSWORD),
        tls=ssl.create_default_context(cafile=str(server.cert)),
        **kw,
    )


# ---------------------------------------------------------------- the tests


def test_the_webhook_posts_json_signed_with_hmac(http_receiver):
    Webhook(http_receiver.url + "/hook", SECRET)(MESSAGE)
    assert http_receiver.posts == [MESSAGE.as_json()]
    assert http_receiver.refused == 0


def test_a_wrong_secret_is_refused_by_the_receiver_and_said(http_receiver):
    with pytest.raises(DeliveryError, match="answered 401"):
        Webhook(http_receiver.url + "/hook", "another secret")(MESSAGE)
    assert http_receiver.refused == 1 and http_receiver.posts == []


def test_the_signature_is_the_hex_hmac_sha256_of_the_body():
    body = b'{"a": 1}'
    assert signature("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def test_a_receiver_that_refuses_connections_is_a_delivery_error():
    with pytest.raises(DeliveryError, match="cannot reach"):
        Webhook(f"http://127.0.0.1:{free_port()}/hook")(MESSAGE)
    with pytest.raises(DeliveryError, match="cannot reach"):
        Ping(f"http://127.0.0.1:{free_port()}/ping")()


def test_the_ping_is_a_get(http_receiver):
    Ping(http_receiver.url + "/ping/abc")()
    assert [path for _, path in http_receiver.gets] == ["/ping/abc"]


def test_email_goes_over_starttls_with_a_login(smtp_server):
    email_to(smtp_server)(MESSAGE)
    assert smtp_server.mailbox.logins == [USER]
    [raw] = smtp_server.mailbox.messages
    mail = message_from_bytes(raw)
    assert mail["Subject"] == MESSAGE.subject
    assert mail["To"] == "technician@museum.example, curator@museum.example"
    assert mail["X-Vmcontroller-Id"] == MESSAGE.id
    assert mail.get_payload(decode=True).decode().replace("\r\n", "\n") == "one\ntwo\n"


def test_a_wrong_password_is_said(smtp_server):
    with pytest.raises(DeliveryError, match="refused the login of 'technician': 535"):
        email_to(smtp_server, password="wrong")(MESSAGE)
    assert smtp_server.mailbox.messages == []


def test_a_certificate_not_trusted_is_refused(smtp_server):
    untrusting = Email(
        host="127.0.0.1",
        port=smtp_server.port,
        sender="vm@museum.example",
        to=("technician@museum.example",),
        user=USER,
        password=PASSWORD,
    )
    with pytest.raises(DeliveryError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting(MESSAGE)


def test_without_starttls_the_server_refuses_the_mail(smtp_server):
    with pytest.raises(DeliveryError, match="530"):
        email_to(smtp_server, starttls=False, user=None)(MESSAGE)


def test_a_login_without_starttls_is_said_with_the_setting_to_look_at(smtp_server):
    # The server offers AUTH only after STARTTLS: a login over plain text is not possible.
    with pytest.raises(DeliveryError, match=r"AUTH .*not supported.*\(see notify_smtp_starttls\)"):
        email_to(smtp_server, starttls=False)(MESSAGE)
    assert smtp_server.mailbox.messages == []


def test_a_receiver_that_hangs_up_without_answering_is_a_delivery_error():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)  # the request, then no answer

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(DeliveryError, match=f"cannot reach http://127.0.0.1:{port}/hook: "):
            Webhook(f"http://127.0.0.1:{port}/hook", timeout=10)(MESSAGE)
    finally:
        thread.join(10)
        listener.close()


def write_config(tmp_path: Path, **values) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({"vm_name": "artwork", **values}))
    return path


def test_notify_test_sends_through_every_channel_and_pings(tmp_path, http_receiver):
    config = write_config(
        tmp_path,
        notify_webhook_url=http_receiver.url + "/hook",
        notify_webhook_secret=SECRET,
        ping_url=http_receiver.url + "/ping",
    )
    result = invoke("notify", "test", "--config", str(config))
    assert result.exit_code == 0, shown(result)
    assert result.stdout.splitlines() == ["webhook: sent", "ping: sent"]
    [post] = http_receiver.posts
    assert post["kinds"] == [ALERT_TEST] and post["vm"] == "artwork"
    assert [path for _, path in http_receiver.gets] == ["/ping"]


def test_notify_test_says_which_channel_failed_and_exits_1(tmp_path, http_receiver):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    config = write_config(
        tmp_path,
        notify_webhook_url=http_receiver.url + "/hook",
        notify_webhook_secret_file=str(secret_file),
        notify_email_to=["technician@museum.example"],
        notify_email_from="vm@museum.example",
        notify_smtp_host="127.0.0.1",
        notify_smtp_port=free_port(),
    )
    result = invoke("notify", "test", "--config", str(config))
    assert result.exit_code == 1, shown(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "webhook: sent"  # the secret came from its file
    assert lines[1].startswith("email: FAILED: cannot reach SMTP server 127.0.0.1:")


def test_notify_test_without_a_channel_is_a_usage_error(tmp_path):
    result = invoke("notify", "test", "--config", str(write_config(tmp_path)))
    assert result.exit_code == 2
    assert "no notification channel is configured" in result.stderr


def test_check_config_masks_the_notification_secrets(tmp_path):
    config = write_config(
        tmp_path,
        notify_webhook_url="https://hooks.museum.example/x",
        notify_webhook_secret=SECRET,
        notify_email_to=["technician@museum.example"],
        notify_email_from="vm@museum.example",
        notify_smtp_host="mail.museum.example",
        notify_smtp_user=USER,
        notify_smtp_password=PASSWORD,
    )
    result = invoke("check-config", "--config", str(config))
    assert result.exit_code == 0, shown(result)
    assert SECRET not in result.stdout and PASSWORD not in result.stdout
    assert "notify_smtp_password: '********'" in result.stdout
