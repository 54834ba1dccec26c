"""Real services for the team tests: a PostgreSQL 15 cluster and an ``mlflow server``, each on a free port of
127.0.0.1, started and stopped by the tests (no Docker).

PostgreSQL: ``initdb`` refuses to run as root, so as root the cluster is owned and run by the ``postgres`` user, in
a temporary directory that user can read. When no PostgreSQL binaries are installed this raises (CI installs the
``postgresql`` package in ``.ci/run``); nothing is skipped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

PG_BIN_DIRS = ["/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bin_dir() -> str:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``; raises when PostgreSQL is not installed."""
    for directory in PG_BIN_DIRS:
        if all(os.access(os.path.join(directory, tool), os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise RuntimeError(
        f"PostgreSQL is not installed (no initdb/pg_ctl/postgres in {PG_BIN_DIRS}); "
        "install it: apt-get install -y postgresql"
    )


class PostgresServer:
    """A throw-away PostgreSQL cluster (trust auth, 127.0.0.1 only) with ``start``, ``stop``, ``restart``."""

    def __init__(self) -> None:
        self.bin = pg_bin_dir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="tuner-pg-"))
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        command = [os.path.join(self.bin, tool), *args]
        kwargs = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            kwargs["user"], kwargs["group"] = account.pw_uid, account.pw_gid
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root, **kwargs)
        if result.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}"
            )
        return result

    def start(self) -> None:
        options = f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def restart(self) -> None:
        """Stop (fast: open connections are terminated) and start again on the same port."""
        self.stop()
        self.start()

    def url(self, database: str = "postgres", driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` with lean settings (one worker, no job execution) on a backend store URI; ``stop`` and
    ``start`` again on the same port make an outage."""

    def __init__(self, backend_uri: str, artifacts: Path, port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = artifacts.parent / f"mlflow-{self.port}.log"
        self.command = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.start()

    def start(self, wait: bool = True) -> None:
        """Start the server (``wait``: until it answers)."""
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            self.command, stdout=self.log.open("a"), stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        if wait:
            self.wait_ready()

    def stop(self) -> None:
        """Stop the server: from now on connections are refused."""
        self.close()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections are accepted, nothing answers; requests time out."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze a paused server: it answers at once, and serves the requests that waited."""
        os.killpg(self.process.pid, signal.SIGCONT)

    def wait_ready(self, seconds: float = 180) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server not ready after {seconds} s:\n{self.log.read_text()[-3000:]}")

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)  # a paused server would not stop
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
