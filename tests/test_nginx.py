"""The example TLS proxy in etc/nginx works as documented: run for real on loopback.

The file is taken as shipped; only what must differ on a test machine is
replaced (the listening ports, the certificate paths, the controller's port).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from libvirt_env import free_port, wait_until

pytestmark = pytest.mark.libvirt
REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "etc" / "nginx" / "exhibition-vm-controller.conf"


def nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        pytest.fail("nginx is missing: run scripts/test (scripts/setup-test-tools.sh installs it)",
                    pytrace=False)
    return found


def site_for_test(tmp: Path, https_port: int, http_port: int, controller_port: int) -> Path:
    text = EXAMPLE.read_text()
    text = re.sub(r"^\s*listen \[::\]:\d+.*\n", "", text, flags=re.M)
    text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    text = text.replace("/etc/ssl/certs/exhibition-pc.pem", str(tmp / "cert.pem"))
    text = text.replace("/etc/ssl/private/exhibition-pc.key", str(tmp / "key.pem"))
    text = text.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{controller_port}")
    assert text.count(str(tmp)) == 2 and f":{controller_port}" in text
    site = tmp / "site.conf"
    site.write_text(text)
    main = tmp / "nginx.conf"
    main.write_text(f"""daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    include {site};
}}
""")
    return main


def test_example_nginx_proxy_serves_the_api_over_tls(start_controller, tmp_path):
    controller, api = start_controller()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    https_port, http_port = free_port(), free_port()
    main = site_for_test(tmp_path, https_port, http_port, controller.port)
    check = subprocess.run([nginx(), "-t", "-c", str(main), "-p", str(tmp_path)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx(), "-c", str(main), "-p", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"https://127.0.0.1:{https_port}/api/v1/status"

        def up() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return requests.get(url, verify=str(tmp_path / "cert.pem"), timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_until(up, 15, 0.1, "nginx to serve")
        response = requests.get(url, verify=str(tmp_path / "cert.pem"), timeout=10)
        assert response.json()["vm_name"] == controller.config.vm_name
        assert response.headers["Server"] == "nginx", "server_tokens off: no version"
        big = requests.post(f"https://127.0.0.1:{https_port}/api/v1/snapshot/create",
                            data=b"x" * 70000, verify=str(tmp_path / "cert.pem"), timeout=10)
        assert big.status_code == 413
        plain = requests.get(f"http://127.0.0.1:{http_port}/api/v1/status",
                             allow_redirects=False, timeout=10)
        assert plain.status_code == 301
        assert plain.headers["Location"].startswith("https://")
    finally:
        proc.terminate()
        proc.wait(10)
