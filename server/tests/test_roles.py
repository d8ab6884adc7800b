"""Roles (all, api, worker) on the Python side: which supervisord config and programs each runs
(parsed by supervisor itself), what `init` makes or demands, the worker-secrets bundle, the
`workers` listing release.sh waits on, and a worker host's smoke checks."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from supervisor.options import ServerOptions

from model import cli, smoke
from model.settings import Settings
from testkit.redis_server import redis_server
from testkit.stack import PROJECT_ROOT, free_port

PROGRAMS = {
    "all": {
        "redis",
        "worker",
        "train-worker",
        "webhooks",
        "gunicorn",
        "gunicorn-next",
        "nginx",
        "spiped",
    },
    "api": {
        "redis",
        "worker",
        "train-worker",
        "webhooks",
        "gunicorn",
        "gunicorn-next",
        "nginx",
        "spiped",
        "spiped-redis",
    },
    "worker": {"worker", "train-worker", "spiped-redis-client"},
}


def _settings(tmp_path: Path, role: str, **kw) -> Settings:
    return Settings(role=role, data_dir=tmp_path / "var", **kw)


@pytest.mark.parametrize("role", ["all", "api", "worker"])
def test_each_role_runs_its_programs(tmp_path: Path, role: str, monkeypatch) -> None:
    settings = _settings(
        tmp_path, role, redis_tunnel={"server": "api.example.org:8026", "listen": "[0.0.0.0]:8026"}
    )
    for sub in ("logs", "run"):
        (settings.data_path / sub).mkdir(parents=True)
    monkeypatch.setattr(os, "environ", {**os.environ, **cli.supervisor_env(settings)})
    options = ServerOptions()
    options.configfile = str(cli.supervisor_conf(settings))
    options.process_config(do_usage=False)
    groups = {group.name: group for group in options.process_group_configs}
    assert set(groups) == PROGRAMS[role]
    if role == "api":
        command = groups["spiped-redis"].process_configs[0].command
        assert f"-d -s [0.0.0.0]:8026 -t [127.0.0.1]:{settings.redis.port}" in command
        assert str(settings.redis_tunnel_key) in command
    if role == "worker":
        client = groups["spiped-redis-client"].process_configs[0]
        command = " ".join(client.command.split())
        assert f"-e -D -s [127.0.0.1]:{settings.redis.port} -t api.example.org:8026" in command
        # the tunnel's end is up before the worker connects
        assert client.priority < groups["worker"].process_configs[0].priority


def test_role_configs_differ_only_in_what_they_include() -> None:
    def sections(name: str) -> list[str]:
        lines = (PROJECT_ROOT / name).read_text().splitlines()
        return [line for line in lines if line and not line.startswith(";")]

    base = sections("supervisord.conf")
    for name in ("supervisord-api.conf", "supervisord-worker.conf"):
        other = sections(name)
        assert [line for line in other if not line.startswith("files")] == [
            line for line in base if not line.startswith("files")
        ]


def test_init_of_a_worker_host_needs_the_api_hosts_secrets(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "worker")
    with pytest.raises(cli.SetupError, match="--redis-secrets-from"):
        cli.init_data_dir(settings)
    # A password made up here would fail later as an authentication error: none is made.
    assert not (settings.secrets_dir / "redis_password").exists()
    (settings.secrets_dir / "redis_password").write_text("from-the-api-host\n")
    settings.redis_tunnel_key.write_bytes(os.urandom(32))
    cli.init_data_dir(settings)
    assert settings.redis_password() == "from-the-api-host"
    # No front door on a worker host: no spiped key, redis.conf or nginx.conf of its own.
    assert not settings.spiped_key.exists()
    assert not (settings.secrets_dir / "redis.conf").exists()
    assert not (settings.run_dir / "nginx.conf").exists()


def test_init_of_an_api_host_makes_the_redis_tunnel_key(tmp_path: Path) -> None:
    cli.init_data_dir(_settings(tmp_path / "all", "all"))
    assert not (tmp_path / "all" / "var" / "secrets" / "redis-tunnel.key").exists()
    settings = _settings(tmp_path, "api")
    cli.init_data_dir(settings)
    key = settings.redis_tunnel_key
    assert key.stat().st_size == 32 and key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    cli.init_data_dir(settings)
    assert key.read_bytes() == before  # kept: worker hosts have a copy


def _cli(settings_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRIPTORIUM_")}
    return subprocess.run(
        [sys.executable, "-m", "model", *args],
        env={**env, **settings_env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.live  # runs `python -m model` as processes, a second of imports each
def test_worker_secrets_is_what_a_worker_host_needs(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = {"SCRIPTORIUM_DATA_DIR": str(var), "SCRIPTORIUM_ROLE": "api"}
    assert _cli(env, "init").returncode == 0
    result = _cli(env, "worker-secrets")
    assert result.returncode == 0, result.stderr
    lines = dict(
        line.split("=", 1) for line in result.stdout.splitlines() if not line.startswith("#")
    )
    assert lines["redis_password"] == (var / "secrets" / "redis_password").read_text().strip()
    key = base64.b64decode(lines["redis_tunnel_key"])
    assert key == (var / "secrets" / "redis-tunnel.key").read_bytes()
    refused = _cli({**env, "SCRIPTORIUM_ROLE": "all"}, "worker-secrets")
    assert refused.returncode != 0 and "worker hosts need an API host" in refused.stderr


@pytest.mark.live  # runs `python -m model` as processes, a second of imports each
def test_worker_secrets_never_land_in_a_file_others_can_read(tmp_path: Path) -> None:
    """`worker-secrets > FILE` under umask 022 made FILE world-readable until a chmod: refused
    before anything is written; under umask 077 (docs/operations.md's way) the file is 0600 from
    the start."""
    env = {"SCRIPTORIUM_DATA_DIR": str(tmp_path / "var"), "SCRIPTORIUM_ROLE": "api"}
    assert _cli(env, "init").returncode == 0
    command = f"{sys.executable} -m model worker-secrets > {tmp_path}/worker.secrets"
    for umask, ok in (("022", False), ("077", True)):
        result = subprocess.run(
            ["bash", "-c", f"umask {umask}; {command}"],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("SCRIPTORIUM_")},
                **env,
            },
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        written = (tmp_path / "worker.secrets").read_text()
        assert (result.returncode == 0) == ok, result.stderr
        assert ("redis_password=" in written) == ok
        if not ok:
            assert "umask 077" in result.stderr
        (tmp_path / "worker.secrets").unlink()


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A redis-server of the test's own that asks for a password (conftest's bare_redis does
    not); its port and password."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    password = "pw-for-test"
    with redis_server(tmp_path, password) as port:
        yield port, password


@pytest.mark.live  # runs `python -m model` as processes, a second of imports each
def test_workers_lists_heartbeats_and_finds_this_hosts_new_worker(
    password_redis, tmp_path: Path
) -> None:
    port, password = password_redis
    client = redis.Redis(port=port, password=password)
    machine = socket.gethostname()
    here = "gpu-2"  # this host's worker.name (two hosts on one machine: not the host name)
    child = subprocess.Popen(["sleep", "30"])  # stands for a pool process of worker os.getpid()
    try:
        beats = {
            f"sc:worker:{here}:{child.pid}": {"pid": child.pid, "started_at": 2000.0},
            f"sc:worker:{here}:{os.getpid()}": {"pid": os.getpid(), "started_at": 1000.0},
            f"sc:worker:elsewhere:{child.pid}": {"pid": child.pid, "started_at": 3000.0},
        }
        for key, beat in beats.items():
            beat = {**beat, "host": machine, "installation": key.split(":")[2] + "-id"}
            client.set(key, json.dumps({**beat, "models": ["demo"]}))
        var = tmp_path / "var"
        var.mkdir()
        (var / "installation_id").write_text("gpu-2-id\n")
        env = {
            "SCRIPTORIUM_REDIS__PORT": str(port),
            "SCRIPTORIUM_REDIS__PASSWORD": password,
            "SCRIPTORIUM_WORKER__NAME": here,
            "SCRIPTORIUM_DATA_DIR": str(var),
        }
        listed = _cli(env, "workers", "--json")
        assert listed.returncode == 0, listed.stderr
        assert sorted(row["name"] for row in json.loads(listed.stdout)) == sorted(
            [here, here, "elsewhere"]
        )
        # Printed by their configured names, not the machine's (the same for all three here).
        printed = _cli(env, "workers").stdout.splitlines()
        assert sorted(line.split("\t")[0] for line in printed) == sorted([here, here, "elsewhere"])
        # release.sh: this host's worker (main process = this test), loaded since 1500
        fresh = _cli(env, "workers", "--json", "--since", "1500", "--parent", str(os.getpid()))
        assert fresh.returncode == 0
        assert [(r["name"], r["pid"]) for r in json.loads(fresh.stdout)] == [(here, child.pid)]
        # setup's check: a name a live worker of another installation uses is taken
        assert _cli(env, "workers", "--taken", here).returncode == 0  # this installation's own
        taken = _cli(env, "workers", "--taken", "elsewhere")
        assert taken.returncode == 3 and "in use" in taken.stderr
        assert _cli(env, "workers", "--taken", "free-name").returncode == 0
        assert _cli(env, "workers", "--since", "2500", "--parent", str(os.getpid())).returncode == 1
        gone = _cli({**env, "SCRIPTORIUM_REDIS__PORT": str(free_port())}, "workers")
        assert gone.returncode == 2 and "error: redis" in gone.stderr
    finally:
        child.kill()
        child.wait()


def test_worker_host_smoke_checks_redis_through_the_tunnel(tmp_path: Path, password_redis) -> None:
    port, password = password_redis
    settings = _settings(
        tmp_path,
        "worker",
        redis={"port": port, "password": password},
        redis_tunnel={"server": "api.example.org:8026"},
    )
    smoke._redis_reachable(settings)
    closed = _settings(
        tmp_path,
        "worker",
        redis={"port": free_port(), "password": password},
        redis_tunnel={"server": "api.example.org:8026"},
    )
    with pytest.raises(AssertionError, match=r"tunnel to api\.example\.org:8026"):
        smoke._redis_reachable(closed)
    unset = _settings(tmp_path, "worker", redis={"port": port, "password": password})
    with pytest.raises(AssertionError, match=r"redis_tunnel\.server is not set"):
        smoke._redis_reachable(unset)
    names = [check.__name__ for check in smoke.WORKER_CHECKS]
    assert "_nginx_config_valid" not in names and "_app_answers" not in names


def test_programs_read_the_settings_file_as_they_start(tmp_path: Path) -> None:
    """scripts/with_settings.sh: the file named by SC_ENV_FILE as it is now, over what the
    program inherited from supervisord; without SC_ENV_FILE the environment as given."""
    env_file = tmp_path / "scriptorium.env"
    env_file.write_text("SCRIPTORIUM_FETCH__ALLOW='[\"127.0.0.0/8\"]'\n")
    wrapper = str(PROJECT_ROOT / "scripts" / "with_settings.sh")
    base = {"PATH": os.environ["PATH"], "SCRIPTORIUM_GUNICORN_BIND": "unix:/x.sock"}
    read = subprocess.run(
        [wrapper, "env"], env={**base, "SC_ENV_FILE": str(env_file)}, capture_output=True, text=True
    )
    assert 'SCRIPTORIUM_FETCH__ALLOW=["127.0.0.0/8"]' in read.stdout.splitlines()
    assert "SCRIPTORIUM_GUNICORN_BIND=unix:/x.sock" in read.stdout.splitlines()  # its own
    plain = subprocess.run([wrapper, "env"], env=base, capture_output=True, text=True)
    assert "SCRIPTORIUM_FETCH__ALLOW" not in plain.stdout


@pytest.mark.live  # runs `python -m model` as processes, a second of imports each
def test_supervisord_env_names_what_only_its_restart_applies(tmp_path: Path) -> None:
    """release.sh's warning: values supervisord took at its start that the settings change."""
    env = {"SCRIPTORIUM_DATA_DIR": str(tmp_path / "var"), "SCRIPTORIUM_REDIS__PORT": "6391"}
    started = {k: v for k, v in os.environ.items() if not k.startswith("SCRIPTORIUM_")}
    settings = Settings(data_dir=tmp_path / "var", redis={"port": 6391})
    fresh = cli.supervisor_env(settings)
    # stands for supervisord, started when the port was 6390 (and the rest as now)
    sleeper = subprocess.Popen(["sleep", "30"], env={**started, **fresh, "SC_REDIS_PORT": "6390"})
    try:
        result = _cli(env, "supervisord-env", "--pid", str(sleeper.pid))
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["SC_REDIS_PORT"]
    finally:
        sleeper.kill()
        sleeper.wait()
