"""The ways out: a webhook, e-mail, and the dead man's switch's ping.

Each sender makes one attempt and raises ``DeliveryError`` with a reason a
person can act on; retrying is the outbox's business (outbox.py). Standard
library only: urllib.request for HTTP, smtplib for mail. Not to be confused
with notify.py, which speaks systemd's notify protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from . import __version__
from .alerts import Message
from .config import Config
from .vocab import CHANNEL_EMAIL, CHANNEL_WEBHOOK, DELIVERY_TIMEOUT, SIGNATURE_HEADER

USER_AGENT = f"exhibition-vm-controller/{__version__}"

Sender = Callable[[Message], None]


class DeliveryError(Exception):
    """One attempt failed; the message says why, for the log and status."""


def signature(secret: str, body: bytes) -> str:
    """The webhook's signature header value: ``sha256=`` and the hex HMAC of the body."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _http(request: urllib.request.Request, timeout: float) -> None:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 (http(s) only: config checks)
            answer.read(65536)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"{request.full_url} answered {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DeliveryError(f"cannot reach {request.full_url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # a timeout, a connection reset mid-answer
        raise DeliveryError(f"cannot reach {request.full_url}: {exc}") from None


@dataclass(frozen=True)
class Webhook:
    """POST the message as JSON; signed when a secret is configured."""

    url: str
    secret: str | None = None
    timeout: float = DELIVERY_TIMEOUT

    def __call__(self, message: Message) -> None:
        body = json.dumps(message.as_json()).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.secret, body)
        _http(urllib.request.Request(self.url, data=body, headers=headers), self.timeout)


@dataclass(frozen=True)
class Email:
    """Send the message by SMTP: STARTTLS unless turned off, login when a user is set."""

    host: str
    port: int
    sender: str
    to: tuple[str, ...]
    starttls: bool = True
    user: str | None = None
    password: str | None = None
    timeout: float = DELIVERY_TIMEOUT
    #: The TLS settings for STARTTLS (tests trust their own certificate here).
    tls: ssl.SSLContext | None = None

    def __call__(self, message: Message) -> None:
        mail = EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.to)
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = make_msgid(idstring=message.id)
        mail["X-Vmcontroller-Id"] = message.id
        mail.set_content("\n".join(message.lines) + "\n")
        where = f"SMTP server {self.host}:{self.port}"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=self.tls or ssl.create_default_context())
                if self.user is not None:
                    smtp.login(self.user, self.password or "")
                smtp.send_message(mail)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"{where} refused the login of {self.user!r}: {_smtp(exc)}"
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"{where}: {exc} (see notify_smtp_starttls)") from None
        except smtplib.SMTPException as exc:
            raise DeliveryError(f"{where}: {_smtp(exc)}") from None
        except OSError as exc:
            raise DeliveryError(f"cannot reach {where}: {exc}") from None


def _smtp(exc: smtplib.SMTPException) -> str:
    code = getattr(exc, "smtp_code", None)
    text = getattr(exc, "smtp_error", None)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {text}" if code is not None else str(exc)


@dataclass(frozen=True)
class Ping:
    """The dead man's switch: a GET the receiver expects every so often."""

    url: str
    timeout: float = DELIVERY_TIMEOUT

    def __call__(self) -> None:
        _http(urllib.request.Request(self.url, headers={"User-Agent": USER_AGENT}), self.timeout)


def channels(config: Config) -> dict[str, Sender]:
    """The configured channels by name (vocab.CHANNELS), none when nothing is configured."""
    found: dict[str, Sender] = {}
    if config.notify_webhook_url is not None:
        found[CHANNEL_WEBHOOK] = Webhook(config.notify_webhook_url, config.notify_webhook_secret)
    if config.notify_email_to is not None:
        assert config.notify_smtp_host is not None and config.notify_email_from is not None
        found[CHANNEL_EMAIL] = Email(
            host=config.notify_smtp_host,
            port=config.notify_smtp_port,
            sender=config.notify_email_from,
            to=config.notify_email_to,
            starttls=config.notify_smtp_starttls,
            user=config.notify_smtp_user,
            password=config.notify_smtp_password,
        )
    return found


def ping(config: Config) -> Ping | None:
    return None if config.ping_url is None else Ping(config.ping_url)
