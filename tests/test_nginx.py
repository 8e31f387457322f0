"""The example TLS proxy in etc/nginx works as documented: run for real on loopback.

The file is taken as shipped; only what must differ on a test machine is
replaced (the listening ports, the certificate paths, the controller's port).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from libvirt_env import free_port, wait_until

pytestmark = pytest.mark.libvirt
REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "etc" / "nginx" / "exhibition-vm-controller.conf"


def nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        pytest.fail(
            "nginx is missing: run scripts/test (scripts/setup-test-tools.sh installs it)",
            pytrace=False,
        )
    return found


ACCESS_LOG = "/var/log/nginx/exhibition-vm-controller.access.log"
SECRET = "s3cret-token-0123456789abcdef"


def site_for_test(tmp: Path, https_port: int, http_port: int, controller_port: int) -> Path:
    text = EXAMPLE.read_text()
    text = re.sub(r"^\s*listen \[::\]:\d+.*\n", "", text, flags=re.M)
    replacements = {
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "/etc/ssl/certs/exhibition-pc.pem": str(tmp / "cert.pem"),
        "/etc/ssl/private/exhibition-pc.key": str(tmp / "key.pem"),
        "http://127.0.0.1:8000": f"http://127.0.0.1:{controller_port}",
        ACCESS_LOG: str(tmp / "access.log"),
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    site = tmp / "site.conf"
    site.write_text(text)
    main = tmp / "nginx.conf"
    # As Debian's nginx.conf does, the http block logs every request with the
    # default format (query strings included): the site must override it.
    main.write_text(f"""daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{}}
http {{
    access_log {tmp}/default-access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    include {site};
}}
""")
    return main


@contextlib.contextmanager
def example_proxy(tmp_path: Path, controller_port: int) -> Iterator[tuple[str, str, str]]:
    """nginx running the example in front of the controller: (https base, http base, CA file)."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    https_port, http_port = free_port(), free_port()
    main = site_for_test(tmp_path, https_port, http_port, controller_port)
    check = subprocess.run(
        [nginx(), "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(
        [nginx(), "-c", str(main), "-p", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    https, ca = f"https://127.0.0.1:{https_port}", str(tmp_path / "cert.pem")
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                # Any answer from the controller (401 with a token configured), not a 502.
                return requests.get(https + "/api/v1/status", verify=ca, timeout=2).status_code in (
                    200,
                    401,
                )
            except requests.ConnectionError:
                return False

        wait_until(up, 15, 0.1, "nginx to serve")
        yield https, f"http://127.0.0.1:{http_port}", ca
    finally:
        proc.terminate()
        proc.wait(10)


def test_example_nginx_proxy_serves_the_api_over_tls(start_controller, tmp_path):
    controller, api = start_controller()
    with example_proxy(tmp_path, controller.port) as (https, http, ca):
        response = requests.get(https + "/api/v1/status", verify=ca, timeout=10)
        assert response.json()["vm_name"] == controller.config.vm_name
        assert response.headers["Server"] == "nginx", "server_tokens off: no version"
        plain = requests.get(http + "/api/v1/status", allow_redirects=False, timeout=10)
        assert plain.status_code == 301
        assert plain.headers["Location"].startswith("https://")


def test_example_nginx_refuses_a_big_body_itself_before_the_controller_sees_it(
    start_controller, tmp_path
):
    controller, api = start_controller()
    body = b"x" * 70000  # above client_max_body_size 64k (and the controller's own 64 KiB)
    direct = api.call(
        "POST", "/api/v1/snapshot/create", "/api/v1/snapshot/create", expect=413, data=body
    )
    assert "detail" in direct.json(), "the controller's own 413 is JSON"
    with example_proxy(tmp_path, controller.port) as (https, http, ca):
        big = requests.post(https + "/api/v1/snapshot/create", data=body, verify=ca, timeout=10)
        assert big.status_code == 413
        # nginx's own page, not the controller's JSON passed through.
        assert big.headers["Content-Type"].startswith("text/html"), big.headers
        assert "413 Request Entity Too Large" in big.text and "<center>nginx</center>" in big.text
        # nginx logs the request once it has finished with the connection (after lingering
        # over the unread body: lingering_time, 30 s by default).
        wait_until(
            lambda: (
                '"POST /api/v1/snapshot/create HTTP/1.1" 413'
                in (tmp_path / "access.log").read_text()
            ),
            35,
            0.1,
            "nginx to log the 413",
        )
    assert api.get("/api/v1/snapshots")["snapshots"] == ["ready"], "nothing was created"


def test_example_nginx_keeps_tokens_out_of_logs_and_off_plain_http(start_controller, tmp_path):
    controller, api = start_controller(api_token=SECRET)
    with example_proxy(tmp_path, controller.port) as (https, http, ca):
        # Over TLS the token works, and the access log records the request without it.
        ok = requests.get(f"{https}/api/v1/status?token={SECRET}", verify=ca, timeout=10)
        assert ok.status_code == 200
        assert (
            requests.get(
                f"{https}/api/v1/events?limit=1&token={SECRET}", verify=ca, timeout=10
            ).status_code
            == 200
        )
        # Over plain HTTP a token is refused, never passed on (nor redirected with).
        for method, path, headers in [
            ("GET", f"/api/v1/revert/disable?token={SECRET}", {}),
            ("POST", f"/api/v1/revert/disable?x=1&token={SECRET}", {}),
            ("GET", "/api/v1/revert/disable", {"Authorization": f"Bearer {SECRET}"}),
        ]:
            plain = requests.request(
                method, http + path, headers=headers, allow_redirects=False, timeout=10
            )
            assert plain.status_code == 403, (method, path, plain.status_code)
            assert "Location" not in plain.headers
            assert "https://" in plain.json()["detail"]
        assert (
            api.get("/api/v1/status", headers={"Authorization": f"Bearer {SECRET}"})[
                "auto_revert_enabled"
            ]
            is True
        )
        assert (
            api.get("/api/v1/events?trigger=api", headers={"Authorization": f"Bearer {SECRET}"})[
                "events"
            ]
            == []
        ), "nothing reached the API"
    logged = (tmp_path / "access.log").read_text()
    assert "/api/v1/status" in logged and "/api/v1/revert/disable" in logged, logged
    assert SECRET not in logged and "token=" not in logged, logged
    default = tmp_path / "default-access.log"
    assert not default.exists() or SECRET not in default.read_text()
