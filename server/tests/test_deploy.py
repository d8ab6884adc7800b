"""scripts/cloudvps_setup.sh and scripts/release.sh for real, as root, into a temporary prefix with
test ports: an API host (--role api) set up twice (the second run changes nothing), the installed
stack answers and runs a task, a release under load drops no request and loses no task (nor a
request through the spiped tunnel, although the release changes spiped.conf), a broken release
rolls itself back, --rollback goes back by hand, a Ctrl-C mid-release goes back too; then a worker
host (--role worker, a second prefix) reaches the API host's Redis through its own tunnel, runs
tasks and takes a release of its own. The worker-host walk-through of docs/operations.md
("Scaling out: worker hosts"), step by step: a setting of the operator's applied by
`release.sh --restart` (seen in the running worker's environment) and kept by a rerun of setup.

Slow (the first setup builds a venv with torch, 2-3 min; the whole module ~6 min), so it has its
own module: `pytest --ignore=server/tests/test_deploy.py` leaves it out.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from server.tests.conftest import jpeg_bytes
from testkit.live import starts_processes
from testkit.stack import PROJECT_ROOT, TERMINAL, free_port

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("apt-get"),
        reason="cloudvps_setup.sh needs root on Debian (as in CI)",
    ),
]

# Per run: two runs on one machine must not share (or delete) each other's user.
SERVICE_USER = f"sc-test-{os.getpid()}"
GIT = ["git", "-c", "user.name=Scriptorium tests", "-c", "user.email=tests@scriptorium.invalid"]


def _clean_env() -> dict[str, str]:
    """The scripts must not depend on this shell's settings (they scrub SCRIPTORIUM_* anyway)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SCRIPTORIUM_", "SC_"))}


def _run(argv: list[str], timeout: float = 900) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=_clean_env(), cwd="/"
    )
    return result, time.monotonic() - started


def _remove_installation(prefix: Path) -> None:
    """Stop an installation's supervisord (waiting for it to be gone) and delete it."""
    if (prefix / "bin" / "scriptoriumctl").exists():
        _run([str(prefix / "bin" / "scriptoriumctl"), "shutdown"], timeout=200)
    pid_file = prefix / "shared" / "var" / "run" / "supervisord.pid"
    deadline = time.monotonic() + 200
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    shutil.rmtree(prefix, ignore_errors=True)


def _commit(repo: Path, message: str) -> str:
    subprocess.run([*GIT, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-qm", message], check=True)
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


# What the checkout's path may hold: quotes, spaces, $(...) — deploy.env is sourced by release.sh
# as root, and must read it back as a path, never run it. (The scripts run in /: a command that
# ran would leave the file there.)
PWNED = Path("/") / f"scriptorium-deploy-pwned-{os.getpid()}"


@pytest.fixture(scope="module")
def source_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository holding this working tree (what a release installs: a commit)."""
    repo = tmp_path_factory.mktemp("source") / f'it\'s a "checkout" $(touch {PWNED.name})'
    repo.mkdir()
    repo.parent.chmod(0o755)
    files = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = PROJECT_ROOT / name.decode()
        if src.is_file():
            (repo / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name.decode())
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    _commit(repo, "snapshot of the working tree")
    return repo


@dataclass
class Installation:
    prefix: Path
    url: str
    runs: list[tuple[str, float]] = field(default_factory=list)  # (output, seconds) per setup
    admin_key: str = ""
    setup: list[str] = field(default_factory=list)  # its cloudvps_setup.sh command
    secrets: Path = Path()  # a worker host's worker.secrets
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def env_file(self) -> Path:
        return self.prefix / "shared" / "scriptorium.env"

    def rerun_setup(self, *extra: str) -> subprocess.CompletedProcess:
        result, seconds = _run([*self.setup, *extra])
        self.timings["rerun of setup"] = seconds
        return result

    def environ(self, program: str) -> dict[str, str]:
        """What the running program really has (/proc/PID/environ)."""
        pid = self.service("ctl", "pid", program).strip()
        raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
        return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)

    @property
    def var(self) -> Path:
        return self.prefix / "shared" / "var"

    def current(self) -> str:
        return (self.prefix / "current").readlink().name

    def service(self, *args: str, check: bool = True) -> str:
        """python -m model ... as the service user, in the current release."""
        python = str(self.prefix / "current" / ".venv" / "bin" / "python")
        env_cmd = str(self.prefix / "bin" / "scriptorium-env")
        result, _ = _run([env_cmd, python, "-m", "model", *args], timeout=120)
        assert result.returncode == 0 or not check, result.stdout + result.stderr
        return result.stdout

    def release(self, *args: str) -> tuple[subprocess.CompletedProcess, float]:
        # The operator's way: the script of the running release finds its prefix itself.
        return _run([str(self.prefix / "current" / "scripts" / "release.sh"), *args])

    def status(self) -> dict[str, str]:
        """supervisorctl status: program -> state."""
        out = self.service("ctl", "status", check=False)
        return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}

    def wait_ready(self, timeout_s: float = 240) -> dict:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                resp = requests.get(self.url + "/readyz", timeout=5)
                if resp.status_code == 200:
                    return resp.json()
                last = resp.text
            except requests.RequestException as exc:
                last = str(exc)
            time.sleep(1)
        raise AssertionError(f"installed stack not ready: {last}")


@pytest.fixture(scope="module")
@starts_processes
def installation(source_repo: Path) -> Iterator[Installation]:
    prefix = Path(tempfile.mkdtemp(prefix="scriptorium-deploy-", dir="/tmp"))
    prefix.chmod(0o755)  # the service user must reach its release
    # Until the shipped weights are committed, a test run may name other model dirs: their
    # models go where an operator adds models.
    models = prefix / "shared" / "models"
    models.mkdir(parents=True)
    for folder in json.loads(os.environ.get("SCRIPTORIUM_MODELS__DIRS", "[]")):
        for path in Path(folder).glob("*"):
            shutil.copy2(path, models / path.name)
    (prefix / "shared").chmod(0o755)
    http_port = free_port()
    setup = [
        str(PROJECT_ROOT / "scripts" / "cloudvps_setup.sh"),
        *("--role", "api", "--prefix", str(prefix), "--user", SERVICE_USER),
        *("--source", str(source_repo)),
        *("--http-port", str(http_port), "--redis-port", str(free_port())),
        *("--spiped-bind", "127.0.0.1", "--spiped-port", str(free_port())),
        *("--redis-tunnel-bind", "127.0.0.1", "--redis-tunnel-port", str(free_port())),
        "--start",
    ]
    inst = Installation(prefix, f"http://127.0.0.1:{http_port}", setup=setup)
    try:
        for _ in range(2):
            result, seconds = _run(setup, timeout=1500)
            assert result.returncode == 0, result.stdout + result.stderr
            inst.runs.append((result.stdout, seconds))
        key_lines = [line for line in inst.runs[0][0].splitlines() if "ADMIN API KEY" in line]
        assert key_lines, inst.runs[0][0]
        inst.admin_key = key_lines[0].rsplit(" ", 1)[1]
        inst.wait_ready()
        yield inst
    finally:
        _remove_installation(prefix)
        subprocess.run(["userdel", SERVICE_USER], capture_output=True)


def test_setup_twice_second_run_changes_nothing(installation: Installation) -> None:
    (first, first_s), (second, second_s) = installation.runs
    print(f"\ncloudvps_setup.sh: first run {first_s:.0f} s, second run {second_s:.1f} s")
    assert "changed: installed release" in first
    assert "\nsetup: no change\n" in second, second
    assert "changed:" not in second and "ADMIN API KEY" not in second
    # Every "changed:" line counted (writes through a pipe once went uncounted: 22 lines, "20").
    assert f"\nsetup: {first.count('  changed: ')} changes\n" in first, first
    # The stack that answers on its port is the one it started.
    own = (installation.var / "installation_id").read_text().strip()
    assert f"/readyz answers as this installation ({own})" in first, first
    assert (
        requests.get(installation.url + "/readyz", timeout=10).headers["X-Scriptorium-Installation"]
        == own
    )


def test_start_refuses_ports_another_stack_holds(installation: Installation) -> None:
    """--start where another stack listens (this one's HTTP and Redis ports): refused before
    anything is installed. (It used to start anyway: redis and nginx in BACKOFF, /readyz
    answering ready for the other stack.)"""
    prefix = Path(tempfile.mkdtemp(prefix="scriptorium-busy-", dir="/tmp"))
    prefix.chmod(0o755)
    venvs = prefix / "shared" / "venvs"
    venvs.mkdir(parents=True)
    for venv in (installation.prefix / "shared" / "venvs").iterdir():
        (venvs / venv.name).symlink_to(venv)  # (no torch install, should it get that far)
    redis_port = _setting(installation, "SCRIPTORIUM_REDIS__PORT")
    try:
        result, _ = _run(
            [
                *installation.setup[:3],  # the script, --role api
                *("--prefix", str(prefix), "--user", SERVICE_USER),
                *("--http-port", installation.url.rsplit(":", 1)[1], "--redis-port", redis_port),
                *("--spiped-bind", "127.0.0.1", "--spiped-port", str(free_port())),
                *("--redis-tunnel-bind", "127.0.0.1", "--redis-tunnel-port", str(free_port())),
                "--start",
            ],
            timeout=600,
        )
        assert result.returncode != 0, result.stdout
        assert "already in use" in result.stderr and redis_port in result.stderr, result.stderr
        assert not (prefix / "current").exists() and not (prefix / "bin").exists()
    finally:
        _remove_installation(prefix)


def test_installed_layout_users_and_permissions(installation: Installation) -> None:
    prefix = installation.prefix
    release = prefix / "current"
    assert release.is_symlink() and (release / "RELEASE").is_file()
    assert (release / ".venv").resolve().parent == prefix / "shared" / "venvs"
    key = prefix / "shared" / "keys" / "spiped.key"
    assert key.stat().st_size == 32 and key.stat().st_mode & 0o777 == 0o600
    assert key.owner() == SERVICE_USER
    unit = prefix / "shared" / "systemd" / "scriptorium.service"
    if not Path("/run/systemd/system").is_dir():
        assert f"User={SERVICE_USER}" in unit.read_text()
    supervisord = int((installation.var / "run" / "supervisord.pid").read_text())
    assert Path(f"/proc/{supervisord}").owner() == SERVICE_USER
    # (exit status 3: gunicorn-next is stopped, as it is except during a release)
    status = installation.status()
    for program in ("redis", "worker", "gunicorn", "nginx", "spiped", "spiped-redis"):
        assert status.get(program) == "RUNNING", status
    assert status["gunicorn-next"] == "STOPPED"


def test_settings_files_read_back_as_written(installation: Installation, source_repo: Path) -> None:
    """A checkout path with quotes and $(...) is a path in deploy.env, which release.sh sources."""
    read = subprocess.run(
        [
            "bash",
            "-c",
            f'. {installation.prefix}/shared/deploy.env; printf "%s\\n" "$SOURCE" "$ROLE"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert read == [str(source_repo), "api"]
    assert not PWNED.exists()
    settings = (installation.prefix / "shared" / "scriptorium.env").read_text()
    assert "SCRIPTORIUM_ROLE='api'" in settings
    assert "SCRIPTORIUM_REDIS_TUNNEL__LISTEN='[127.0.0.1]:" in settings


def test_redis_tunnel_gives_nothing_without_the_key(installation: Installation) -> None:
    """The Redis tunnel's port speaks only spiped: a plain Redis client gets no answer."""
    listen = _setting(installation, "SCRIPTORIUM_REDIS_TUNNEL__LISTEN")
    port = int(listen.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        sock.sendall(b"PING\r\n")
        try:
            answer = sock.recv(100)
        except (TimeoutError, ConnectionResetError):
            answer = b""
    assert b"PONG" not in answer


def _setting(installation: Installation, name: str) -> str:
    for line in (installation.prefix / "shared" / "scriptorium.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip("'")
    raise AssertionError(f"{name} not in scriptorium.env")


def _upload(url: str, key: str, image: bytes, session: requests.Session | None = None) -> str:
    resp = (session or requests).post(
        url + "/task",
        headers={"X-API-Key": key},
        data={"type": "detect"},
        files=[("images", ("page.jpg", io.BytesIO(image), "image/jpeg"))],
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    return resp.json()["task_id"]


def _wait_task(url: str, key: str, task_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        body = requests.get(
            url + f"/status/{task_id}", headers={"X-API-Key": key}, timeout=30
        ).json()
        if body.get("state") in TERMINAL:
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} never ended: {body}")


@pytest.fixture(scope="module")
def image(pages) -> bytes:
    return jpeg_bytes(pages[2])


def test_installed_stack_answers_and_completes_a_task(
    installation: Installation, image: bytes
) -> None:
    ready = installation.wait_ready()
    assert ready["workers"]
    task_id = _upload(installation.url, installation.admin_key, image)
    body = _wait_task(installation.url, installation.admin_key, task_id)
    assert body["state"] == "SUCCEEDED", body


OPERATOR_LINES = """# mine: loopback test servers allowed
SCRIPTORIUM_FETCH__ALLOW='["127.0.0.0/8"]'
"""


def test_operator_settings_survive_setup_and_apply_at_restart(installation: Installation) -> None:
    """The operator's lines in scriptorium.env outlive a rerun of setup (which rewrote the whole
    file), setup's own edited line is put back and said to need a restart, and `release.sh
    --restart` gives every program the file as it is now (supervisord's environment, read once,
    used to be what they got)."""
    env_file = installation.env_file
    text = env_file.read_text()
    env_file.write_text(text.replace("SCRIPTORIUM_HTTP__HOST='127.0.0.1'", "") + OPERATOR_LINES)
    result = installation.rerun_setup()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"changed: wrote {env_file}" in result.stdout
    assert "\nsetup: 1 changes\n" in result.stdout, result.stdout
    assert "changed under a running stack" in result.stdout
    assert env_file.read_text() == text + OPERATOR_LINES
    again = installation.rerun_setup()
    assert "\nsetup: no change\n" in again.stdout and "changed:" not in again.stdout, again.stdout
    result, seconds = installation.release("--restart")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "supervisord took" not in result.stdout  # nothing waits for supervisord's restart
    print(f"\nrelease.sh --restart: {seconds:.0f} s")
    for program in ("gunicorn", "worker", "webhooks"):
        env = installation.environ(program)
        assert env.get("SCRIPTORIUM_FETCH__ALLOW") == '["127.0.0.0/8"]', (program, env)
    # torch's compiled kernels stay inside the installation (not /tmp/torchinductor_<user>)
    cache = installation.environ("worker")["TORCHINDUCTOR_CACHE_DIR"]
    assert Path(cache).is_relative_to(installation.prefix)


class Load:
    """What a front end does meanwhile: status polls and task submissions, each thread with its
    own keep-alive session, at a bounded rate. Any error or unexpected status is a failure.
    tunnel_url: one more poller goes through the front end's spiped tunnel."""

    def __init__(
        self, url: str, key: str, image: bytes, pollers: int = 3, tunnel_url: str = ""
    ) -> None:
        self.url, self.key, self.image = url, key, image
        self.stop_event = threading.Event()
        self.failures: list[str] = []
        self.requests = 0
        self.tunnel_requests = 0
        self.task_ids: list[str] = [_upload(url, key, image)]
        self.threads = [threading.Thread(target=self._poll) for _ in range(pollers)]
        self.threads.append(threading.Thread(target=self._submit))
        if tunnel_url:
            self.threads.append(threading.Thread(target=self._poll, args=(tunnel_url,)))

    def _call(
        self, session: requests.Session, method: str, path: str, ok: set[int], url: str = "", **kw
    ) -> None:
        self.requests += 1
        if url:
            self.tunnel_requests += 1
        try:
            resp = session.request(method, (url or self.url) + path, timeout=30, **kw)
            if resp.status_code not in ok:
                self.failures.append(f"{method} {path}: {resp.status_code} {resp.text[:200]}")
            elif method == "POST":
                self.task_ids.append(resp.json()["task_id"])
        except requests.RequestException as exc:
            self.failures.append(f"{method} {path}: {exc!r}")

    def _poll(self, url: str = "") -> None:
        session = requests.Session()
        session.headers["X-API-Key"] = self.key
        while not self.stop_event.wait(0.05):
            task_id = random.choice(self.task_ids)
            self._call(session, "GET", f"/status/{task_id}", {200, 202}, url)

    def _submit(self) -> None:
        session = requests.Session()
        session.headers["X-API-Key"] = self.key
        while not self.stop_event.wait(0.5):
            files = [("images", ("page.jpg", io.BytesIO(self.image), "image/jpeg"))]
            self._call(session, "POST", "/task", {202}, data={"type": "detect"}, files=files)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        time.sleep(1)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1)
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def lost_tasks(self) -> list[str]:
        ends = {tid: _wait_task(self.url, self.key, tid)["state"] for tid in self.task_ids}
        return [tid for tid, state in ends.items() if state != "SUCCEEDED"]


@pytest.fixture(scope="module")
def load_key(installation: Installation) -> str:
    # Its own key with a high rate limit: the load must not be told to back off (429).
    return installation.service("keys", "create", "load-test", "--rate", "100000/minute").strip()


PROBE_PROGRAM = """[program:release-probe]
command=sleep 100000
stdout_logfile=%(ENV_SC_DATA)s/logs/release-probe.log
"""


@pytest.fixture(scope="module")
def front_tunnel(installation: Installation) -> Iterator[str]:
    """The front end's end of the tunnel (config/spiped/), with the installation's key."""
    port = free_port()
    target = _setting(installation, "SCRIPTORIUM_SPIPED__LISTEN")
    key = installation.prefix / "shared" / "keys" / "spiped.key"
    proc = subprocess.Popen(
        ["spiped", "-e", "-F", "-s", f"[127.0.0.1]:{port}", "-t", target, "-k", str(key)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "no answer through the tunnel"
            time.sleep(0.2)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_release_under_load_drops_no_request_and_loses_no_task(
    installation: Installation, source_repo: Path, load_key: str, image: bytes, front_tunnel: str
) -> None:
    before = installation.current()
    spiped_pid = installation.service("ctl", "pid", "spiped").strip()
    (source_repo / "RELEASE_NOTES").write_text("second release\n")
    # A release may bring supervisord programs of its own: they must be running after it.
    (source_repo / "config" / "supervisor" / "release-probe.conf").write_text(PROBE_PROGRAM)
    # A changed tunnel definition is left for --restart-tunnel: restarting spiped drops its
    # clients (it cost 25-26 failed requests through the tunnel when release.sh applied it).
    spiped_conf = source_repo / "config" / "supervisor" / "spiped.conf"
    spiped_conf.write_text(spiped_conf.read_text().replace("stopwaitsecs=10", "stopwaitsecs=11"))
    commit = _commit(source_repo, "second release")
    with Load(installation.url, load_key, image, tunnel_url=front_tunnel) as load:
        result, seconds = installation.release("HEAD")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    lost = load.lost_tasks()
    print(
        f"\nrelease.sh: {seconds:.0f} s; during it {load.requests} requests "
        f"({load.tunnel_requests} through the tunnel), {len(load.failures)} failed, "
        f"{len(load.task_ids)} tasks submitted, {len(lost)} lost"
    )
    assert load.failures == []
    assert lost == []
    assert load.tunnel_requests > 0
    assert "warning: spiped's definition changed" in out
    assert installation.service("ctl", "pid", "spiped").strip() == spiped_pid
    assert installation.current() != before
    assert f"commit={commit}" in (installation.prefix / "current" / "RELEASE").read_text()
    # Every program now runs the new release's code.
    for program in ("gunicorn", "worker"):
        pid = installation.service("ctl", "pid", program).strip()
        assert Path(f"/proc/{pid}/cwd").resolve().name == installation.current()
    assert "RUNNING" in installation.service("ctl", "status", "release-probe", check=False)


BROKEN = """

# Deliberately broken release (server/tests/test_deploy.py): never ready.
from flask import abort as _abort, request as _request  # noqa: E402


@app.before_request
def _never_ready() -> None:
    if _request.path == "/readyz":
        _abort(503)
"""


def test_broken_release_rolls_back_by_itself(
    installation: Installation, source_repo: Path, load_key: str, image: bytes
) -> None:
    before = installation.current()
    with (source_repo / "model" / "wsgi.py").open("a") as fh:
        fh.write(BROKEN)
    _commit(source_repo, "a release whose /readyz always fails")
    with Load(installation.url, load_key, image) as load:
        result, seconds = installation.release("--ready-timeout", "20", "HEAD")
    out = result.stdout + result.stderr
    assert result.returncode == 3, out
    assert "rolling back" in out
    lost = load.lost_tasks()
    print(
        f"\nbroken release + automatic rollback: {seconds:.0f} s; {load.requests} requests, "
        f"{len(load.failures)} failed, {len(lost)} tasks lost"
    )
    assert installation.current() == before
    failed = sorted(p for p in (installation.prefix / "releases").iterdir() if p.name > before)
    assert failed and (failed[-1] / "FAILED").exists()
    assert installation.wait_ready(timeout_s=30)["status"] == "ready"
    assert load.failures == []
    assert lost == []


def test_rollback_by_hand(installation: Installation, image: bytes) -> None:
    before = installation.current()
    result, seconds = installation.release("--rollback")
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"\nrelease.sh --rollback: {seconds:.0f} s")
    assert installation.current() < before
    assert not (installation.prefix / "current" / "RELEASE_NOTES").exists()
    assert "release-probe" not in installation.service("ctl", "status", check=False)
    installation.wait_ready(timeout_s=30)
    task_id = _upload(installation.url, installation.admin_key, image)
    assert _wait_task(installation.url, installation.admin_key, task_id)["state"] == "SUCCEEDED"


def test_ctrl_c_mid_release_goes_back_to_the_running_release(
    installation: Installation, source_repo: Path
) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) once gunicorn runs
    the new release and the worker restarts: the previous release runs again, consistently."""
    before = installation.current()
    (source_repo / "RELEASE_NOTES").write_text("interrupted release\n")
    _commit(source_repo, "a release that gets interrupted")
    proc = subprocess.Popen(
        [str(installation.prefix / "current" / "scripts" / "release.sh"), "HEAD"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_clean_env(),
        cwd="/",
        start_new_session=True,
    )
    out = []
    for line in proc.stdout:
        out.append(line)
        if "worker: warm restart" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    out.append(proc.stdout.read())
    rc = proc.wait(timeout=600)
    text = "".join(out)
    print(f"\n{text}")
    assert rc == 130, text
    assert "SIGINT" in text and f"running {before} again" in text
    assert installation.current() == before
    assert os.readlink(installation.var / "run" / "upstream.sock") == "gunicorn.sock"
    status = installation.status()
    assert status["gunicorn"] == status["worker"] == "RUNNING", status
    assert status["gunicorn-next"] == "STOPPED", status
    for program in ("gunicorn", "worker"):
        pid = installation.service("ctl", "pid", program).strip()
        assert Path(f"/proc/{pid}/cwd").resolve().name == before
    interrupted = max(p for p in (installation.prefix / "releases").iterdir())
    assert (interrupted / "FAILED").exists()
    assert installation.wait_ready(timeout_s=30)["status"] == "ready"


# --- a worker host ------------------------------------------------------------------------------

WORKER_USER = f"sc-test-w-{os.getpid()}"
WORKER_NAME = "gpu-2"


@pytest.fixture(scope="module")
def worker_host(installation: Installation, source_repo: Path) -> Iterator[Installation]:
    """A second prefix set up with --role worker against the API host (same machine, its own
    service user, data dir and Redis port: the worker reaches Redis through its tunnel end)."""
    prefix = Path(tempfile.mkdtemp(prefix="scriptorium-worker-", dir="/tmp"))
    prefix.chmod(0o755)
    shared = prefix / "shared"
    (shared / "venvs").mkdir(parents=True)
    shared.chmod(0o755)
    # The API host's venv (same requirements, same Python): no second torch install here.
    for venv in (installation.prefix / "shared" / "venvs").iterdir():
        (shared / "venvs" / venv.name).symlink_to(venv)
    shutil.copytree(installation.prefix / "shared" / "models", shared / "models")
    # docs/operations.md's step 1, on one machine: 0600 from the start
    secrets = Path(tempfile.mkdtemp(prefix="worker-secrets-")) / "worker.secrets"
    scriptorium = installation.prefix / "bin" / "scriptorium"
    subprocess.run(
        ["bash", "-c", f"(umask 077; {scriptorium} worker-secrets > {secrets})"], check=True
    )
    assert secrets.stat().st_mode & 0o777 == 0o600
    tunnel_port = _setting(installation, "SCRIPTORIUM_REDIS_TUNNEL__LISTEN").rsplit(":", 1)[1]
    setup = [
        str(PROJECT_ROOT / "scripts" / "cloudvps_setup.sh"),
        *("--role", "worker", "--prefix", str(prefix), "--user", WORKER_USER),
        *("--source", str(source_repo), "--redis-port", str(free_port())),
        *("--api-host", "127.0.0.1", "--redis-tunnel-port", tunnel_port),
        # The same machine: the API host's workers already go by its host name.
        *("--worker-name", WORKER_NAME),
    ]
    host = Installation(prefix, installation.url, setup=setup)
    try:
        first, seconds = _run([*setup, "--redis-secrets-from", str(secrets), "--start"])
        assert first.returncode == 0, first.stdout + first.stderr
        started = time.monotonic()
        host.runs.append((first.stdout, seconds))
        host.timings["worker host's first setup"] = seconds
        second, seconds = _run(setup)  # the secrets are in place: not needed again
        assert second.returncode == 0, second.stdout + second.stderr
        host.runs.append((second.stdout, seconds))
        _wait_worker_named(installation, WORKER_NAME)
        host.timings["its worker in /readyz after setup"] = time.monotonic() - started
        host.secrets = secrets
        yield host
    finally:
        _remove_installation(prefix)
        shutil.rmtree(secrets.parent, ignore_errors=True)
        subprocess.run(["userdel", WORKER_USER], capture_output=True)


def test_worker_host_setup_twice_and_what_it_runs(worker_host: Installation) -> None:
    (first, first_s), (second, second_s) = worker_host.runs
    print(f"\nworker host setup: first run {first_s:.0f} s, second run {second_s:.1f} s")
    assert "changed: installed release" in first and "ADMIN API KEY" not in first
    assert "\nsetup: no change\n" in second, second
    # (train-worker: the train job's own queue, docs/training.md)
    running = {"spiped-redis-client": "RUNNING", "worker": "RUNNING", "train-worker": "RUNNING"}
    deadline = time.monotonic() + 120  # STARTING until startsecs pass (slow on a loaded machine)
    while (status := worker_host.status()) != running and time.monotonic() < deadline:
        time.sleep(1)
    assert status == running
    var = worker_host.var
    for secret in (
        var / "secrets" / "redis_password",
        worker_host.prefix / "shared/keys/redis-tunnel.key",
    ):
        assert secret.stat().st_mode & 0o777 == 0o600 and secret.owner() == WORKER_USER
    assert not (var / "run" / "nginx.conf").exists()
    settings = (worker_host.prefix / "shared" / "scriptorium.env").read_text()
    assert "SCRIPTORIUM_ROLE='worker'" in settings
    assert "SCRIPTORIUM_REDIS_TUNNEL__SERVER='[127.0.0.1]:" in settings


def test_worker_host_runs_tasks(installation: Installation, worker_host: Installation) -> None:
    """With the API host's own worker stopped, the worker host's takes the queue."""
    listed = worker_host.service("workers")
    # A heartbeat per pool process (worker.concurrency of them on each host), both hosts'.
    assert len(listed.splitlines()) >= 2, listed
    installation.service("ctl", "stop", "worker")
    try:
        api_key = installation.admin_key
        ids = [
            requests.post(
                installation.url + "/task",
                headers={"X-API-Key": api_key},
                json={"type": "noop"},
                timeout=30,
            ).json()["task_id"]
            for _ in range(3)
        ]
        for task_id in ids:
            assert _wait_task(installation.url, api_key, task_id, 120)["state"] == "SUCCEEDED"
    finally:
        installation.service("ctl", "start", "worker")
        _wait_worker_named(installation, socket.gethostname())  # as the next tests expect


def _wait_worker_named(installation: Installation, name: str, timeout_s: float = 300) -> float:
    """Until a live worker (the program, not the train-worker beside it) goes by `name`
    (/readyz); the seconds it took."""
    started = time.monotonic()
    while not any(
        (w["name"], w["role"]) == (name, "worker")
        for w in installation.wait_ready(timeout_s)["workers"]
    ):
        assert time.monotonic() < started + timeout_s, f"no live worker named {name}"
        time.sleep(0.5)
    return time.monotonic() - started


def test_readme_worker_host_walkthrough(
    installation: Installation, worker_host: Installation
) -> None:
    """docs/operations.md, "Scaling out: worker hosts", steps 4-6 (1-3: the worker_host fixture):
    the host's workers listed under its name, a setting of the operator's applied by
    `release.sh --restart`, a rerun of setup keeping it."""
    # 4. both hosts' workers, each under its own name
    _wait_worker_named(installation, socket.gethostname())
    names = {line.split("\t")[0] for line in installation.service("workers").splitlines()}
    assert names == {WORKER_NAME, socket.gethostname()}, names
    # 5. a setting of the operator's, applied by a restart
    with worker_host.env_file.open("a") as fh:
        fh.write(OPERATOR_LINES)
    result, seconds = worker_host.release("--restart")
    assert result.returncode == 0, result.stdout + result.stderr
    worker_host.timings["release.sh --restart"] = seconds
    env = worker_host.environ("worker")
    assert env.get("SCRIPTORIUM_FETCH__ALLOW") == '["127.0.0.0/8"]', env
    assert env.get("SCRIPTORIUM_WORKER__NAME") == WORKER_NAME
    # 6. a rerun of setup keeps it
    again = worker_host.rerun_setup()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "\nsetup: no change\n" in again.stdout, again.stdout
    assert worker_host.env_file.read_text().endswith(OPERATOR_LINES)
    print("\nworker-host walk-through (docs/operations.md):")
    for step, seconds in worker_host.timings.items():
        print(f"  {step}: {seconds:.1f} s")


def test_a_worker_name_in_use_elsewhere_is_refused(worker_host: Installation) -> None:
    """The API host's workers go by this machine's host name (live heartbeats): the worker host
    may not take it too, and keeps its own."""
    before = worker_host.env_file.read_text()
    result = worker_host.rerun_setup("--worker-name", socket.gethostname())
    assert result.returncode != 0, result.stdout
    assert "is taken" in result.stderr and "another installation" in result.stderr, result.stderr
    assert worker_host.env_file.read_text() == before


def test_a_rotated_tunnel_key_alone_is_a_change(worker_host: Installation) -> None:
    """Only the tunnel key differs from what is installed: reported, counted, and the tunnel's
    restart named (it said "ok" and "no change")."""
    key = worker_host.prefix / "shared" / "keys" / "redis-tunnel.key"
    installed = key.read_bytes()
    rotated = worker_host.secrets.with_name("rotated.secrets")
    text = worker_host.secrets.read_text()
    new_key = base64.b64encode(os.urandom(32)).decode()
    rotated.write_text(re.sub(r"(?m)^redis_tunnel_key=.*$", f"redis_tunnel_key={new_key}", text))
    try:
        result = worker_host.rerun_setup("--redis-secrets-from", str(rotated))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"changed: wrote {key}" in result.stdout
        assert "ok: Redis password and tunnel key" not in result.stdout
        assert "\nsetup: 1 changes\n" in result.stdout, result.stdout
        assert "restart spiped-redis-client" in result.stdout
    finally:
        # The tunnel's running end still has the installed key: put it back.
        restored = worker_host.rerun_setup("--redis-secrets-from", str(worker_host.secrets))
        assert restored.returncode == 0, restored.stdout + restored.stderr
    assert key.read_bytes() == installed


def test_worker_host_release(worker_host: Installation, source_repo: Path) -> None:
    before = worker_host.current()
    (source_repo / "RELEASE_NOTES").write_text("a worker-host release\n")
    commit = _commit(source_repo, "a worker-host release")
    result, seconds = worker_host.release("HEAD")
    out = result.stdout + result.stderr
    print(f"\nrelease.sh on a worker host: {seconds:.0f} s")
    assert result.returncode == 0, out
    assert "worker ready (its heartbeat is in Redis)" in out
    assert "gunicorn" not in out
    assert worker_host.current() != before
    assert f"commit={commit}" in (worker_host.prefix / "current" / "RELEASE").read_text()
    pid = worker_host.service("ctl", "pid", "worker").strip()
    assert Path(f"/proc/{pid}/cwd").resolve().name == worker_host.current()
