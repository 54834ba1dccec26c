"""``tuner dashboard`` over real HTTP: optuna-dashboard's own WSGI app behind the guard, served by wsgiref on
127.0.0.1 (in a thread, and once as the real command in a subprocess); read-only by default, basic auth with a
bcrypt hash, no binding beyond loopback without auth."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from tests.helpers import ROOT
from tests.service_fixtures import free_port
from tuner.study.dashboard import dashboard_app, hash_password, is_loopback, parse_auth

PASSWORD = "correct horse battery"
WRITES = [
    ("POST", "/api/studies", {"study_name": "created", "directions": ["minimize"]}),
    ("POST", "/api/studies/1/rename", {"study_name": "renamed"}),
    ("PUT", "/api/studies/1/note", {"version": 1, "body": "a note"}),
    ("PATCH", "/api/studies/1", {}),
    ("DELETE", "/api/studies/1", None),
]


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    import optuna

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    optuna.create_study(study_name="shared", storage=url).optimize(lambda trial: trial.suggest_float("x", 0, 1), 3)
    return url


@pytest.fixture
def serve():
    """Serve a WSGI app on 127.0.0.1 in a thread; gives its base URL."""
    servers = []

    def start(app) -> str:
        server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _call(url: str, method: str = "GET", body=None, authorization: str | None = None):
    """(status, headers, body text) of one request; HTTP errors are answers too."""
    headers = {"Accept-Encoding": "gzip", "Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _study_names(url: str) -> list[str]:
    import optuna

    return sorted(s.study_name for s in optuna.get_all_study_summaries(url, include_best_trial=False))


def test_a_read_only_dashboard_serves_reads_and_refuses_every_write(serve, storage_url):
    base = serve(dashboard_app(storage_url))
    status, _, body = _call(f"{base}/api/studies")
    assert status == 200 and [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["shared"]
    assert _call(f"{base}/api/studies/1")[0] == 200
    assert _call(f"{base}/dashboard/")[0] == 200
    for method, path, body in WRITES:
        status, _, text = _call(base + path, method, body)
        assert status == 403, f"{method} {path} answered {status}"
        assert b"--allow-writes" in text
    assert _study_names(storage_url) == ["shared"]


def test_allow_writes_passes_writes_to_optuna_dashboard(serve, storage_url):
    base = serve(dashboard_app(storage_url, allow_writes=True))
    status, _, _ = _call(f"{base}/api/studies", "POST", WRITES[0][2])
    assert status == 201
    assert _study_names(storage_url) == ["created", "shared"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        _basic("team", "wrong password"),
        _basic("other", PASSWORD),
        _basic("team", PASSWORD + " "),
        _basic("team", "x" * 100),
        "Basic !!not-base64!!",
        "Basic " + base64.b64encode(b"no colon").decode(),
        "Bearer " + base64.b64encode(f"team:{PASSWORD}".encode()).decode(),
    ],
    ids=["none", "wrong-password", "wrong-user", "trailing-space", "too-long", "not-base64", "no-colon", "bearer"],
)
def test_with_auth_any_other_credential_gets_401_with_a_challenge(serve, storage_url, password_hash, authorization):
    base = serve(dashboard_app(storage_url, parse_auth(f"team:{password_hash}")))
    for method, path, body in [("GET", "/api/studies", None), ("GET", "/dashboard/", None), WRITES[0]]:
        status, headers, _ = _call(base + path, method, body, authorization)
        assert status == 401, f"{method} {path} answered {status}"
        assert headers["WWW-Authenticate"].startswith("Basic realm=")


def test_with_auth_the_right_credential_reads_and_writes_only_when_allowed(serve, storage_url, password_hash):
    auth = parse_auth(f"team:{password_hash}")
    right = _basic("team", PASSWORD)
    read_only = serve(dashboard_app(storage_url, auth))
    for _ in range(2):  # the second answer comes from the remembered header
        assert _call(f"{read_only}/api/studies", authorization=right)[0] == 200
    assert _call(f"{read_only}/api/studies", "POST", WRITES[0][2], right)[0] == 403
    writable = serve(dashboard_app(storage_url, auth, allow_writes=True))
    assert _call(f"{writable}/api/studies", "POST", WRITES[0][2])[0] == 401
    assert _call(f"{writable}/api/studies", "POST", WRITES[0][2], right)[0] == 201


def test_hash_password_prints_a_hash_that_auth_accepts(cli):
    from typer.testing import CliRunner

    from tuner.cli import app

    result = CliRunner().invoke(app, ["dashboard", "--hash-password"], input=f"{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    password_hash = result.stdout.strip().splitlines()[-1]
    assert PASSWORD not in result.stdout
    assert parse_auth(f"team:{password_hash}").accepts(_basic("team", PASSWORD))
    assert not parse_auth(f"team:{password_hash}").accepts(_basic("team", "guess"))
    assert cli("dashboard", "--hash-password").exit_code == 2  # an empty password (no input)


@pytest.mark.parametrize(
    "auth, message",
    [
        ("team:CHANGE-ME", "is not a bcrypt hash"),
        ("team:plain-text-password", "is not a bcrypt hash"),
        ("CHANGE-ME", "no 'USER:' part"),
        (":$2b$12$" + "a" * 53, "no 'USER:' part"),
    ],
)
def test_an_auth_that_is_not_user_and_bcrypt_hash_exits_2_without_echoing_it(workdir, cli, auth, message):
    result = cli("dashboard", "--auth", auth)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    secret = auth.partition(":")[2]
    assert not secret or secret not in result.output
    assert not (workdir / "tuner.db").exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "dashboard.example.com", "::"])
def test_binding_beyond_loopback_without_auth_exits_2_before_opening_anything(workdir, cli, monkeypatch, host):
    monkeypatch.delenv("TUNER_DASHBOARD_AUTH", raising=False)
    result = cli("dashboard", "--host", host, "--port", str(free_port()))
    assert result.exit_code == 2
    assert f"refusing to serve the dashboard on {host} without auth" in result.output
    assert "--hash-password" in result.output and "Traceback" not in result.output
    assert not (workdir / "tuner.db").exists()


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("0.0.0.0", False)]
    + [("::", False), ("10.0.0.5", False), ("example.com", False), ("", False)],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_the_tuner_dashboard_command_guards_optuna_dashboard_over_http(storage_url, password_hash, tmp_path):
    port = free_port()
    env = {**os.environ, "TUNER_DASHBOARD_AUTH": f"team:{password_hash}", "PYTHONPATH": str(ROOT)}
    log = tmp_path / "dashboard.log"
    command = [sys.executable, "-m", "tuner", "dashboard", "--storage", storage_url, "--port", str(port)]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base, right = f"http://127.0.0.1:{port}", _basic("team", PASSWORD)
    try:
        _wait_until_it_answers(f"{base}/api/studies", process)
        assert _call(f"{base}/api/studies")[0] == 401
        assert _call(f"{base}/api/studies", authorization=_basic("team", "wrong"))[0] == 401
        status, _, body = _call(f"{base}/api/studies", authorization=right)
        assert status == 200 and json.loads(body)["study_summaries"][0]["study_name"] == "shared"
        assert _call(f"{base}/static/bundle.js", authorization=right)[0] == 200
        assert _call(f"{base}/api/studies", "POST", WRITES[0][2], right)[0] == 403
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "(read-only, basic auth as 'team')" in log.read_text() and password_hash not in log.read_text()
    assert _study_names(storage_url) == ["shared"]


def _wait_until_it_answers(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"tuner dashboard exited with {process.returncode}"
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"tuner dashboard did not answer at {url}")
