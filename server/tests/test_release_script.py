"""scripts/release.sh and deploy_lib.sh against a fake installation, in seconds: supervisorctl,
the releases' python, pip and curl are stand-ins (fake_deploy_tools.py) that keep what supervisord
would know in a state file, so each test can make one thing go wrong (a worker that cannot start,
a failing `signal HUP`, a Ctrl-C at a chosen step) and check what the script left behind: where
`current` points, which release each program runs, nginx's upstream link, the FAILED marks.
test_deploy.py runs the same scripts for real (slow, root)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.signals import with_sigint_ignored
from testkit.stack import PROJECT_ROOT

# Each test runs the scripts with dozens of processes and one release a second (a release id
# starts with the second it was built in): minutes in all, so not the fast layer.
pytestmark = pytest.mark.live

SCRIPTS = PROJECT_ROOT / "scripts"
TOOLS = Path(__file__).with_name("fake_deploy_tools.py")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
WRAPPER = f'#!/bin/sh\nexec {sys.executable} {TOOLS} TOOL "$0" "$@"\n'


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


@dataclass
class Host:
    """A fake installation: PREFIX with releases/, current, shared/, bin/ and the fake tools."""

    root: Path
    role: str

    @property
    def prefix(self) -> Path:
        return self.root / "prefix"

    @property
    def fake(self) -> Path:
        return self.root / "fake"

    @property
    def source(self) -> Path:
        return self.root / "source"

    @property
    def run_dir(self) -> Path:
        return self.prefix / "shared" / "var" / "run"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SCRIPTORIUM_", "SC_"))}
        env.update(
            PATH=f"{self.root / 'fakebin'}:{env['PATH']}",
            SC_PYTHON=str(self.root / "fakebin" / "python3"),
            FAKE_DIR=str(self.fake),
            FAKE_PREFIX=str(self.prefix),
            FAKE_ROLE=self.role,
            FAKE_PYTHON_WRAPPER=WRAPPER,
            **extra,
        )
        return env

    # --- the source checkout ------------------------------------------------------------------

    def commit(self, fake: dict | None = None, files: dict[str, str] | None = None) -> str:
        """A commit of the source: this release's fake.json and any files changed."""
        _write(self.source / "fake.json", json.dumps(fake or {}))
        for name, text in (files or {}).items():
            _write(self.source / name, text)
        subprocess.run([*GIT, "-C", str(self.source), "add", "-A"], check=True)
        subprocess.run(
            [*GIT, "-C", str(self.source), "commit", "-qm", "r", "--allow-empty"], check=True
        )
        # Release ids start with the second they were built in: one release a second keeps
        # their order (as it is on a real machine, where a release takes a minute).
        time.sleep(1.05 - time.time() % 1)
        return subprocess.run(
            ["git", "-C", str(self.source), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()

    # --- running the scripts ------------------------------------------------------------------

    def lib(self, script: str, **env: str) -> subprocess.CompletedProcess:
        """Bash with deploy_lib.sh sourced and this installation's globals, running `script`."""
        prelude = (
            f"set -euo pipefail; shopt -s inherit_errexit; . {SCRIPTS / 'deploy_lib.sh'}; "
            f"PREFIX={self.prefix}; RUN={self.run_dir}; load_deploy_env; "
            "READY_TIMEOUT=10; DRAIN_S=0; RESTART_TUNNEL=0; "
        )
        return subprocess.run(
            ["bash", "-c", prelude + script],
            capture_output=True,
            text=True,
            env=self.env(**env),
            timeout=120,
        )

    def argv(self, *args: str) -> list[str]:
        return [
            "bash",
            str(SCRIPTS / "release.sh"),
            *("--prefix", str(self.prefix), "--drain-seconds", "0"),
            *args,
        ]

    def release(self, *args: str, timeout: float = 120) -> tuple[int, str, float]:
        started = time.monotonic()
        result = subprocess.run(
            self.argv(*args), capture_output=True, text=True, env=self.env(), timeout=timeout
        )
        return result.returncode, result.stdout + result.stderr, time.monotonic() - started

    def interrupted_release(
        self, pause: str, sig: int, *args: str, group: bool = True, ignored: bool = False
    ):
        """release.sh, stopped by `sig` once the fake tools reach the call `pause`: to the whole
        process group as a Ctrl-C in a terminal does (group), or to the script alone (kill).
        `ignored`: started as a background job of a script is, with SIGINT ignored."""
        paused = self.fake / "paused"
        paused.unlink(missing_ok=True)
        argv = self.argv(*args)
        proc = subprocess.Popen(
            with_sigint_ignored(argv) if ignored else argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env(FAKE_PAUSE=pause, FAKE_PAUSE_S="3"),
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while not paused.exists():
            assert proc.poll() is None, f"ended before {pause!r}: {proc.stdout.read()}"
            assert time.monotonic() < deadline, f"never reached {pause!r}"
            time.sleep(0.05)
        time.sleep(0.2)
        if group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        out, _ = proc.communicate(timeout=120)
        return proc.returncode, out

    # --- what it left -------------------------------------------------------------------------

    def current(self) -> str:
        return (self.prefix / "current").readlink().name

    def releases(self) -> list[str]:
        return sorted(p.name for p in (self.prefix / "releases").iterdir())

    def failed(self, release: str) -> bool:
        return (self.prefix / "releases" / release / "FAILED").exists()

    def state(self) -> dict:
        return json.loads((self.fake / "state.json").read_text())

    def events(self, kind: str, name: str) -> list[list]:
        return [e for e in self.state()["events"] if e[0] == kind and e[1] == name]

    def calls(self) -> str:
        path = self.fake / "calls.log"
        return path.read_text() if path.exists() else ""

    def assert_consistent(self, release: str) -> None:
        """Everything runs `release`, and nginx's link is where it belongs."""
        assert self.current() == release
        programs = self.state()["programs"]
        assert programs["worker"]["state"] == "RUNNING"
        assert programs["worker"]["release"] == release
        if self.role == "worker":
            return
        assert os.readlink(self.run_dir / "upstream.sock") == "gunicorn.sock"
        assert programs["gunicorn"]["state"] == "RUNNING"
        assert programs["gunicorn"]["release"] == release
        assert programs["gunicorn-next"]["state"] == "STOPPED"
        template = self.prefix / "releases" / release / "config" / "nginx" / "scriptorium.conf"
        assert (self.run_dir / "nginx.conf").read_text() == template.read_text()


def _make_host(root: Path, role: str) -> Host:
    host = Host(root, role)
    fakebin = root / "fakebin"
    _write(fakebin / "python3", WRAPPER.replace("TOOL", "python"), 0o755)
    _write(fakebin / "curl", WRAPPER.replace("TOOL", "curl").replace('"$0" ', ""), 0o755)
    # release.sh insists on root; nothing it does here needs it.
    _write(
        fakebin / "id",
        '#!/bin/sh\n[ "$1" = -u ] && echo 0 && exit 0\nexec /usr/bin/id "$@"\n',
        0o755,
    )
    host.fake.mkdir()
    prefix = host.prefix
    for sub in (
        "releases",
        "bin",
        "shared/venvs",
        "shared/cache",
        "shared/var/run",
        "shared/var/logs",
    ):
        (prefix / sub).mkdir(parents=True)
    ctl = WRAPPER.replace("TOOL", "ctl").replace('"$0" ', "")
    _write(prefix / "bin" / "scriptoriumctl", ctl, 0o755)
    _write(
        prefix / "bin" / "scriptorium-env",
        '#!/bin/bash\ndir=$FAKE_PREFIX/current\nif [ "${1:-}" = --in ]; then dir=$2; shift 2; fi\n'
        'cd "$dir" && exec "$@"\n',
        0o755,
    )
    http_url = "" if role == "worker" else "http://127.0.0.1:9"
    _write(
        prefix / "shared" / "deploy.env",
        f"SOURCE='{host.source}'\nSVC_USER='nobody'\nKEEP='5'\nROLE='{role}'\nHTTP_URL='{http_url}'\n",
    )
    # The source: the real supervisor configs (what reread compares), a stand-in nginx template.
    src = host.source
    src.mkdir()
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    for conf in PROJECT_ROOT.glob("supervisord*.conf"):
        shutil.copy2(conf, src / conf.name)
    shutil.copytree(PROJECT_ROOT / "config" / "supervisor", src / "config" / "supervisor")
    _write(src / "config" / "nginx" / "scriptorium.conf", "# nginx v1\n")
    _write(src / "requirements.txt", "fake==1\n")
    _write(src / "model" / "__init__.py", "")
    host.commit()
    # The first release, installed as cloudvps_setup.sh does, with every program running it.
    result = host.lib(
        'id=$(build_release HEAD); switch_current "$id"; in_release "$id" -m model init'
    )
    assert result.returncode == 0, result.stderr
    first = host.current()
    env = host.env()
    code = (
        "import json, time, fake_deploy_tools as f\n"
        "progs = {}\n"
        "for i, (name, spec) in enumerate(sorted(f.definitions(f.current_release()).items())):\n"
        "    up = spec['autostart']\n"
        "    progs[name] = {'state': 'RUNNING' if up else 'STOPPED', 'pid': 100 + i if up else 0,\n"
        "                   'def': spec['def'], 'release': f.current_release(),\n"
        "                   'started_at': time.time() - 60}\n"
        "with f.state() as data:\n"
        "    data['programs'] = progs\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, cwd=TOOLS.parent, check=True)
    (host.fake / "calls.log").unlink(missing_ok=True)
    host.assert_consistent(first)
    return host


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return _make_host(tmp_path, "all")


@pytest.fixture
def worker_host(tmp_path: Path) -> Host:
    return _make_host(tmp_path, "worker")


# --- usage -------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["release.sh", "cloudvps_setup.sh"])
def test_help_is_a_usage_text(script: str) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPTS / script), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: ")
    assert "set -e" not in result.stdout and "umask" not in result.stdout


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean() -> None:
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    # check-set-e-suppressed (SC2310): the functions run in conditions say why they may.
    result = subprocess.run(
        ["shellcheck", "-x", "-o", "check-set-e-suppressed", *scripts],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stdout


def test_env_line_reads_back_as_written_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    values = [
        f'/src/it\'s $(touch {marker}) `touch {marker}` "q" \\ ; x',
        "'",
        "",
        "a\nb",
        "[0.0.0.0]:8025",
        '["model/weights", "/srv/x/shared/models"]',
    ]
    script = ". scripts/deploy_lib.sh\n"
    for i in range(len(values)):
        script += f'env_line V{i} "$V{i}_IN" >> {tmp_path}/env\n'
    script += f"set -a; . {tmp_path}/env; set +a\n"
    script += "".join(f'printf "%s\\0" "$V{i}"\n' for i in range(len(values)))
    env = {**os.environ, **{f"V{i}_IN": v for i, v in enumerate(values)}}
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, env=env, cwd=PROJECT_ROOT, check=True
    )
    assert result.stdout.decode().split("\0")[:-1] == values
    assert not marker.exists()


# What an installation made before setup's markers has in shared/scriptorium.env (an operator's
# lines among setup's, as they were found rewritten away).
LEGACY_ENV = """# Scriptorium's settings on this machine: SCRIPTORIUM_<SECTION>__<KEY> overrides
# flask_config.yaml. Read by bin/scriptorium-env (so by supervisord and every program).
# No secrets here. Values are single-quoted: bash sources this file.
SC_HOME='/srv/scriptorium/current'
SCRIPTORIUM_ROLE='worker'
SCRIPTORIUM_REDIS__PORT='6390'
SCRIPTORIUM_REDIS_TUNNEL__SERVER='api:8026'
SCRIPTORIUM_FETCH__ALLOW='["10.0.0.0/8"]'
SCRIPTORIUM_MODELS__DIRS='["model/weights", "/srv/scriptorium/shared/models"]'
# gpu: one child
SCRIPTORIUM_WORKER__CONCURRENCY='1'
"""
OPERATOR = """SCRIPTORIUM_FETCH__ALLOW='["10.0.0.0/8"]'
# gpu: one child
SCRIPTORIUM_WORKER__CONCURRENCY='1'
"""


def test_setup_keeps_the_operators_settings(tmp_path: Path) -> None:
    """operator_settings: the lines of scriptorium.env that cloudvps_setup.sh does not own (it
    used to rewrite the whole file), in a file with its markers and in one from before them."""

    def operator_lines(text: str) -> str:
        (tmp_path / "env").write_text(text)
        script = f". scripts/deploy_lib.sh; operator_settings {tmp_path}/env"
        result = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True
        )
        return result.stdout

    assert operator_lines(LEGACY_ENV) == OPERATOR
    begin, end = (
        subprocess.run(
            ["bash", "-c", f'. scripts/deploy_lib.sh; printf "%s" "${name}"'],
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
            check=True,
        ).stdout
        for name in ("ENV_BEGIN", "ENV_END")
    )
    marked = f"{begin}\nSCRIPTORIUM_ROLE='api'\n# setup's comment\n{end}\n{OPERATOR}"
    assert operator_lines(marked) == OPERATOR
    assert operator_lines(f"{begin}\nSCRIPTORIUM_ROLE='api'\n{end}\n") == ""


# --- a release ---------------------------------------------------------------------------------


def test_release_moves_every_program_and_the_link(host: Host) -> None:
    first = host.current()
    host.commit(files={"config/nginx/scriptorium.conf": "# nginx v2\n"})
    rc, out, _ = host.release("HEAD")
    assert rc == 0, out
    new = host.current()
    assert new != first
    host.assert_consistent(new)
    assert host.events("signal", "HUP")  # the nginx template changed: graceful reload
    assert "/readyz: ready" in out


def test_release_of_an_unchanged_tunnel_definition_leaves_the_tunnel_alone(host: Host) -> None:
    conf = (host.source / "config/supervisor/spiped.conf").read_text()
    host.commit(
        files={
            "config/supervisor/spiped.conf": conf.replace(
                "[program:spiped]", "; a\n[program:spiped]"
            )
        }
    )
    rc, out, _ = host.release("HEAD")
    assert rc == 0, out
    assert host.events("stop", "spiped") == []
    assert "spiped" not in out.replace("spiped.conf", "")


def test_changed_tunnel_definition_waits_for_restart_tunnel(host: Host) -> None:
    """The tunnel's clients were dropped (25-26 failed requests) when a release changed
    spiped.conf: restarting spiped now takes --restart-tunnel; other programs still follow."""
    conf = (host.source / "config/supervisor/spiped.conf").read_text()
    probe = "[program:release-probe]\ncommand=sleep 100000\n"
    host.commit(
        files={
            "config/supervisor/spiped.conf": conf.replace("stopwaitsecs=10", "stopwaitsecs=11"),
            "config/supervisor/release-probe.conf": probe,
        }
    )
    rc, out, _ = host.release("HEAD")
    assert rc == 0, out
    assert host.events("stop", "spiped") == [], "spiped was restarted: its clients were dropped"
    assert "warning: spiped's definition changed" in out
    assert "--restart-tunnel" in out
    programs = host.state()["programs"]
    assert programs["release-probe"]["state"] == "RUNNING"  # a new program is started
    assert "stopwaitsecs=10" in programs["spiped"]["def"]  # still the definition it runs

    rc, out, _ = host.release("--restart", "--restart-tunnel")
    assert rc == 0, out
    assert len(host.events("restart", "spiped")) == 1
    assert "stopwaitsecs=11" in host.state()["programs"]["spiped"]["def"]
    assert "warning" not in out


# --- failures are seen, and rolled back at once ------------------------------------------------


@pytest.mark.parametrize(
    "fake",
    [
        {"fatal": ["worker"]},  # supervisorctl start: spawn error
        {"fatal_after": {"worker": 1}, "ready_after": 60},  # FATAL while /readyz is awaited
        {"fatal": ["gunicorn-next"]},
        {"fatal_after": {"gunicorn": 0.5}, "fatal": ["gunicorn"]},
    ],
    ids=["worker-spawn-error", "worker-fatal-later", "gunicorn-next-fatal", "gunicorn-fatal"],
)
def test_a_program_that_cannot_start_rolls_back_at_once(host: Host, fake: dict) -> None:
    first = host.current()
    host.commit(fake)
    rc, out, seconds = host.release("--ready-timeout", "60", "HEAD")
    assert rc == 3, out
    assert seconds < 20, f"waited {seconds:.0f} s for a program supervisord had given up"
    failed = [r for r in host.releases() if r != first]
    assert len(failed) == 1 and host.failed(failed[0])
    host.assert_consistent(first)
    assert "rolled back" in out


def test_never_ready_waits_the_timeout_then_rolls_back(host: Host) -> None:
    first = host.current()
    host.commit({"never_ready": True})
    rc, out, seconds = host.release("--ready-timeout", "3", "HEAD")
    assert rc == 3, out
    assert 3 <= seconds < 30
    assert "not ready after 3s" in out
    host.assert_consistent(first)


@pytest.mark.parametrize(
    "fake, files, message",
    [
        ({"hup_fails": True}, {"config/nginx/scriptorium.conf": "# v2\n"}, "signal HUP failed"),
        ({"reread_fails": True}, {}, "ctl reread"),
    ],
    ids=["signal-hup", "reread"],
)
def test_a_failing_step_of_the_switch_is_not_ignored(
    host: Host, fake: dict, files: dict, message: str
) -> None:
    """`if activate` turned set -e off inside it: these failures went unnoticed (exit 0)."""
    first = host.current()
    host.commit(fake, files)
    rc, out, _ = host.release("HEAD")
    assert rc == 3, out
    assert message in out
    host.assert_consistent(first)


def test_a_failing_switch_of_current_stops_everything(host: Host) -> None:
    """switch_current failing (here: a directory in the way of its temporary link) went unnoticed:
    gunicorn and the worker were restarted, on the old code, and the release reported success."""
    first = host.current()
    host.commit()
    (host.prefix / ".current.tmp").mkdir()
    (host.prefix / ".current.tmp" / "x").write_text("")
    rc, out, _ = host.release("HEAD")
    assert rc not in (0, 3), out
    assert "could not point current" in out
    assert host.current() == first
    assert not [e for e in host.state()["events"] if e[0] == "start"], "programs were restarted"


def test_smoke_failure_switches_nothing(host: Host) -> None:
    first = host.current()
    host.commit({"smoke_fails": True}, {"config/nginx/scriptorium.conf": "# v2\n"})
    rc, out, _ = host.release("HEAD")
    assert rc == 1, out
    assert "failed its smoke checks" in out
    host.assert_consistent(first)  # nginx.conf rendered from the running release again
    assert not host.state()["events"]


def test_rollback_to_a_release_from_before_the_workers_command(host: Host) -> None:
    """Releases older than `python -m model workers` are judged by /readyz, as they were."""
    host.commit({"no_workers_cmd": True})
    rc, out, _ = host.release("HEAD")
    assert rc == 0, out
    old = host.current()
    host.commit()
    assert host.release("HEAD")[0] == 0
    rc, out, _ = host.release("--rollback")
    assert rc == 0, out
    host.assert_consistent(old)


# --- pruning -----------------------------------------------------------------------------------


def test_prune_keeps_good_releases_and_two_failed(host: Host) -> None:
    """It kept the newest N of all releases: with failed ones among them, good ones went first
    (the last good one before them was deleted while two failed ones were kept)."""
    releases = host.prefix / "releases"
    real = host.current()
    ids = {
        "good": ["20000101T000001Z-a", "20000101T000002Z-b", "20000101T000003Z-c"],
        "failed": ["20000101T000004Z-d", "20000101T000005Z-e", "20000101T000006Z-f"],
    }
    for name in ids["good"] + ids["failed"]:
        shutil.copytree(releases / real, releases / name, symlinks=True)
    for name in ids["failed"]:
        (releases / name / "FAILED").write_text("x\n")
    shutil.rmtree(releases / real)
    host.lib(f"switch_current {ids['good'][-1]}")
    result = host.lib("KEEP=3; prune")
    assert result.returncode == 0, result.stderr
    assert host.releases() == ids["good"] + ids["failed"][-2:]
    assert "pruned failed release 20000101T000004Z-d" in result.stdout
    # KEEP counts good releases only; current and the one to roll back to always stay.
    result = host.lib("KEEP=1; prune")
    assert host.releases() == ids["good"][1:] + ids["failed"][-2:]


def test_previous_of_skips_failed_releases(host: Host) -> None:
    releases = host.prefix / "releases"
    for name in ("20000101T000001Z-a", "20000101T000002Z-b", "20000101T000003Z-c"):
        (releases / name).mkdir()
    (releases / "20000101T000002Z-b" / "FAILED").write_text("x\n")
    result = host.lib("previous_of 20000101T000003Z-c")
    assert result.stdout.strip() == "20000101T000001Z-a"
    assert host.lib("previous_of 20000101T000001Z-a").returncode == 1


def test_program_state_reads_supervisorctl_status(host: Host) -> None:
    result = host.lib("program_state worker; program_state gunicorn-next; program_state nope")
    worker, nxt, nope = result.stdout.splitlines()
    assert worker.startswith("RUNNING ") and int(worker.split()[1]) > 0
    assert nxt == "STOPPED 0"
    assert nope == "UNKNOWN 0"


# --- interrupted -------------------------------------------------------------------------------

POINTS = [
    # (the fake call release.sh is stopped at, what changes in the release)
    ("pip install", {"requirements.txt": "fake==2\n"}),  # building its venv
    ("python smoke", {"config/nginx/scriptorium.conf": "# v2\n"}),  # new nginx.conf rendered
    ("ctl start gunicorn-next", {}),  # current switched, nginx still on gunicorn
    ("ctl start gunicorn", {}),  # nginx on gunicorn-next, gunicorn restarting
    ("ctl start worker", {}),
    ("python workers --since", {}),  # waiting for the new worker
]


@pytest.mark.parametrize("pause, files", POINTS, ids=[p for p, _ in POINTS])
def test_ctrl_c_leaves_the_running_release_consistent(host: Host, pause: str, files: dict) -> None:
    first = host.current()
    host.commit(files=files)
    rc, out = host.interrupted_release(pause, signal.SIGINT, "HEAD")
    assert rc == 130, out
    assert "SIGINT" in out
    host.assert_consistent(first)
    assert not list((host.prefix / "releases").glob(".building-*"))
    for release in host.releases():
        assert release == first or host.failed(release), out


def test_ctrl_c_rolls_back_a_release_started_with_sigint_ignored(host: Host) -> None:
    """A background job of a script starts with SIGINT ignored, which bash cannot trap: the
    script starts itself again with it at its default."""
    first = host.current()
    host.commit()
    rc, out = host.interrupted_release("ctl start worker", signal.SIGINT, "HEAD", ignored=True)
    assert rc == 130, out
    host.assert_consistent(first)


def test_signal_tests_pass_when_pytest_inherits_sigint_ignored(tmp_path: Path) -> None:
    """The suite run as a background job (CI runners, `nohup`): pytest inherits SIGINT ignored,
    and the tests that send Ctrl-C to the children they start still pass (conftest.py hands
    the children SIGINT at its default). One test of each kind: a Python child, a bash script."""
    tests = [
        "server/tests/test_fast_signals.py",
        "server/tests/test_release_script.py::test_interrupted_rollback_by_hand_goes_back_where_it_was",
    ]
    result = subprocess.run(
        with_sigint_ignored(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
        ),
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "4 passed" in result.stdout, result.stdout[-3000:]


def test_term_to_the_script_alone_rolls_back_after_the_step_it_waits_for(host: Host) -> None:
    first = host.current()
    host.commit()
    rc, out = host.interrupted_release("ctl start gunicorn", signal.SIGTERM, "HEAD", group=False)
    assert rc == 143, out
    host.assert_consistent(first)


def test_interrupted_rollback_by_hand_goes_back_where_it_was(host: Host) -> None:
    host.commit()
    assert host.release("HEAD")[0] == 0
    second = host.current()
    rc, out = host.interrupted_release("ctl start worker", signal.SIGINT, "--rollback")
    assert rc == 130, out
    host.assert_consistent(second)


# --- a worker host -----------------------------------------------------------------------------


def test_worker_host_release_restarts_only_the_worker(worker_host: Host) -> None:
    host = worker_host
    first = host.current()
    assert set(host.state()["programs"]) == {"worker", "train-worker", "spiped-redis-client"}
    conf = (host.source / "config/supervisor/worker-host/spiped-redis-client.conf").read_text()
    host.commit(
        files={
            "config/supervisor/worker-host/spiped-redis-client.conf": conf.replace(
                "stopwaitsecs=10", "stopwaitsecs=12"
            )
        }
    )
    rc, out, _ = host.release("HEAD")
    assert rc == 0, out
    host.assert_consistent(host.current())
    assert host.current() != first
    calls = host.calls()
    assert "gunicorn" not in calls and "nginx" not in calls and "upstream" not in calls
    assert "python workers --since" in calls  # its heartbeat, through Redis
    assert "worker ready (its heartbeat is in Redis)" in out
    assert host.events("stop", "spiped-redis-client") == []
    assert "warning: spiped-redis-client's definition changed" in out


def test_worker_host_rolls_back_a_worker_that_cannot_start(worker_host: Host) -> None:
    host = worker_host
    first = host.current()
    host.commit({"fatal": ["worker"]})
    rc, out, seconds = host.release("--ready-timeout", "60", "HEAD")
    assert rc == 3, out
    assert seconds < 20
    host.assert_consistent(first)


def test_worker_host_ctrl_c_while_waiting_for_the_heartbeat(worker_host: Host) -> None:
    host = worker_host
    first = host.current()
    host.commit()
    rc, out = host.interrupted_release("python workers --since", signal.SIGINT, "HEAD")
    assert rc == 130, out
    host.assert_consistent(first)


def test_a_release_without_this_roles_supervisord_conf_is_refused(worker_host: Host) -> None:
    host = worker_host
    first = host.current()
    (host.source / "supervisord-worker.conf").unlink()
    host.commit()
    rc, out, _ = host.release("HEAD")
    assert rc == 3, out
    assert "predates role worker" in out
    host.assert_consistent(first)
