"""The nginx proxy: limits and timeouts derived from Settings, syntax, a real proxied request."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from tests.deploy.files import (
    NGINX,
    compose,
    default,
    free_port,
    go_duration_s,
    interpolate_default,
    nginx_size_bytes,
    nginx_time_s,
)


def test_nginx_body_limit_equals_max_upload(nginx_conf: dict[str, list[list[str]]]) -> None:
    ((size,),) = nginx_conf["client_max_body_size"]
    assert nginx_size_bytes(size) == default("max_upload_bytes")
    mib = f"{default('max_upload_bytes') / 2**20:g} MiB"
    assert mib in (NGINX / "nginx.conf").read_text(), "413 message names another limit"


def test_nginx_timeouts_fit_the_server(nginx_conf: dict[str, list[list[str]]]) -> None:
    timeout = default("request_timeout_s")
    ((read,),) = nginx_conf["proxy_read_timeout"]
    assert nginx_time_s(read) > timeout, "the server's 504 envelope must beat nginx's"
    # Slow clients are cut off by nginx, well inside the server's own deadline.
    for name in ("client_header_timeout", "client_body_timeout"):
        ((value,),) = nginx_conf[name]
        assert 0 < nginx_time_s(value) <= timeout, name
    assert nginx_conf["proxy_request_buffering"] == [["on"]]
    grace = go_duration_s(compose("docker-compose.yml")["services"]["nginx"]["stop_grace_period"])
    assert grace > nginx_time_s(read)


def test_nginx_listen_port_is_published(nginx_conf: dict[str, list[list[str]]]) -> None:
    ((listen,),) = nginx_conf["listen"]
    (published,) = compose("docker-compose.yml")["services"]["nginx"]["ports"]
    assert interpolate_default(published).rpartition(":")[2] == listen


def test_nginx_includes_the_mounted_upstream(nginx_conf: dict[str, list[list[str]]]) -> None:
    ((include,),) = nginx_conf["include"]
    mounts = {v["target"]: v["source"] for v in
              compose("docker-compose.yml")["services"]["nginx"]["volumes"]}
    conf_dir = PurePosixPath(next(t for t, s in mounts.items() if s.endswith("nginx.conf"))).parent
    assert str(conf_dir / include) in mounts
    ((upstream,),) = [args for args in nginx_conf["proxy_pass"]]
    assert upstream == "http://atrous"
    for conf in ("upstream.conf", "upstream.multi-gpu.conf"):
        assert "upstream atrous {" in (NGINX / conf).read_text()


def nginx_version() -> tuple[int, ...] | None:
    binary = shutil.which("nginx")
    if not binary:
        return None
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in match.groups()) if match else None


def local_nginx_conf(tmp_path: Path, listen: int, upstream_port: int) -> Path:
    """The shipped config, pointed at loopback ports; ``resolve`` dropped for nginx < 1.27.3."""
    version = nginx_version()
    assert version
    conf = (NGINX / "nginx.conf").read_text()
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    conf = conf.replace("pid /tmp/nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    assert f"127.0.0.1:{listen}" in conf and str(tmp_path) in conf
    (tmp_path / "nginx.conf").write_text(conf)
    upstream = re.sub(r"server [\w-]+:\d+", f"server 127.0.0.1:{upstream_port}",
                      (NGINX / "upstream.conf").read_text())
    if version < (1, 27, 3):
        upstream = upstream.replace(" resolve", "")
    (tmp_path / "upstream.conf").write_text(upstream)
    for d in ("logs", "client_body_temp", "proxy_temp"):
        (tmp_path / d).mkdir(exist_ok=True)
    return tmp_path / "nginx.conf"


@pytest.fixture
def nginx_binary() -> str:
    binary = shutil.which("nginx")
    if not binary or not nginx_version():
        pytest.skip("nginx is not installed here (apt-get install nginx-light to run this check)")
    return binary


def test_nginx_config_syntax(nginx_binary: str, tmp_path: Path) -> None:
    conf = local_nginx_conf(tmp_path, free_port(), free_port())
    result = subprocess.run([nginx_binary, "-t", "-p", str(tmp_path), "-c", str(conf)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr


class _Upstream(http.server.BaseHTTPRequestHandler):
    """A stand-in server: echoes the request id and the body size."""

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        payload = json.dumps({"bytes": len(body),
                              "request_id": self.headers.get("X-Request-ID")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def running_nginx(nginx_binary: str, tmp_path: Path) -> Iterator[tuple[int, int]]:
    listen, upstream_port = free_port(), free_port()
    conf = local_nginx_conf(tmp_path, listen, upstream_port)
    proc = subprocess.Popen([nginx_binary, "-p", str(tmp_path), "-c", str(conf),
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield listen, upstream_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _request(port: int, path: str, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_nginx_proxies_and_answers_with_the_error_envelope(
        running_nginx: tuple[int, int]) -> None:
    listen, upstream_port = running_nginx
    # No replica up yet: 503 not_ready in the server's envelope, with Retry-After.
    status, headers, body = _request(listen, "/readyz")
    assert status == 503, body
    assert json.loads(body)["error"]["code"] == "not_ready"
    assert headers["Retry-After"] and headers["X-Request-ID"] == json.loads(body)["request_id"]
    # Over the upload limit: refused by nginx before any replica sees it.
    too_big = b"\0" * (default("max_upload_bytes") + 1)
    status, _, body = _request(listen, "/segment", too_big,
                               {"Content-Type": "application/octet-stream"})
    assert status == 413, body
    assert json.loads(body)["error"]["code"] == "payload_too_large"

    server = http.server.ThreadingHTTPServer(("127.0.0.1", upstream_port), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        at_limit = b"\0" * default("max_upload_bytes")
        status, _, body = _request(listen, "/segment", at_limit,
                                   {"Content-Type": "application/octet-stream",
                                    "X-Request-ID": "abc123"})
        assert status == 200, body
        assert json.loads(body) == {"bytes": len(at_limit), "request_id": "abc123"}
    finally:
        server.shutdown()
        server.server_close()


