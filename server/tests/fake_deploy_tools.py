"""Stand-ins for what scripts/release.sh drives, so its logic runs in a second against a temporary
installation (server/tests/test_release_script.py): supervisorctl (`ctl`), the releases' python
(`python`: `-m model init|smoke|upstream|workers`, `-m venv`, `-m compileall`), `pip` and `curl`.

One JSON state file holds what supervisord would know: each program's state, pid, start time, the
release it runs and the definition it was started with. A release's own behaviour comes from its
`fake.json` (smoke fails, never ready, a program that cannot start, ...). FAKE_PAUSE="ctl start
worker" makes the first such call stop for FAKE_PAUSE_S seconds after writing FAKE_DIR/paused, so
a test can interrupt release.sh right there.

Environment: FAKE_DIR (state, calls.log), FAKE_PREFIX (the installation), FAKE_ROLE.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

FAKE_DIR = Path(os.environ["FAKE_DIR"])
PREFIX = Path(os.environ["FAKE_PREFIX"])
ROLE = os.environ.get("FAKE_ROLE", "all")
STATE = FAKE_DIR / "state.json"
RUN = PREFIX / "shared" / "var" / "run"
CONFS = {
    "all": "supervisord.conf",
    "api": "supervisord-api.conf",
    "worker": "supervisord-worker.conf",
}
SOCKETS = {"gunicorn.sock": "gunicorn", "gunicorn-next.sock": "gunicorn-next"}


@contextmanager
def state():
    with open(FAKE_DIR / "state.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = (
            json.loads(STATE.read_text()) if STATE.exists() else {"programs": {}, "next_pid": 1000}
        )
        data.setdefault("events", [])
        data.setdefault("paused", [])
        yield data
        tmp = STATE.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(STATE)


def record(line: str) -> None:
    with open(FAKE_DIR / "calls.log", "a") as fh:
        fh.write(f"{time.time():.2f} {line}\n")


def current_release() -> str:
    return os.readlink(PREFIX / "current").rsplit("/", 1)[-1]


def behaviour(release: str) -> dict:
    path = PREFIX / "releases" / release / "fake.json"
    return json.loads(path.read_text()) if path.exists() else {}


def maybe_pause(command: str) -> bool:
    """True when interrupted (SIGINT) during the pause: the caller exits 130 after acting."""
    wanted = os.environ.get("FAKE_PAUSE", "")
    if not wanted or (command != wanted and not command.startswith(wanted + " ")):
        return False
    with state() as data:
        if wanted in data["paused"]:
            return False
        data["paused"].append(wanted)
    (FAKE_DIR / "paused").write_text(command)
    try:
        time.sleep(float(os.environ.get("FAKE_PAUSE_S", "10")))
    except KeyboardInterrupt:
        return True
    return False


# --- supervisord's programs ----------------------------------------------------------------------


def definitions(release: str) -> dict[str, dict]:
    """[program:x] sections of the role's supervisord conf in a release: text without comments."""
    root = PREFIX / "releases" / release
    conf = (root / CONFS[ROLE]).read_text()
    files = re.search(r"^files\s*=\s*(.+)$", conf, re.M).group(1).split()
    found: dict[str, dict] = {}
    for pattern in files:
        for path in sorted(glob.glob(str(root / pattern))):
            name, lines = None, []
            for line in [*Path(path).read_text().splitlines(), "[end]"]:
                if line.startswith("["):
                    if name:
                        text = "\n".join(lines)
                        found[name] = {"def": text, "autostart": "autostart=false" not in text}
                    match = re.match(r"\[program:(.+)\]", line)
                    name, lines = (match.group(1) if match else None), []
                elif line.strip() and not line.lstrip().startswith(";"):
                    lines.append(" ".join(line.split()))
    return found


def program_state(prog: dict) -> str:
    if prog["state"] == "RUNNING" and prog.get("fatal_at") and time.time() >= prog["fatal_at"]:
        return "FATAL"
    return prog["state"]


def start(data: dict, name: str) -> tuple[int, str]:
    prog = data["programs"][name]
    if program_state(prog) == "RUNNING":
        return 0, f"{name}: ERROR (already started)"
    release = current_release()
    fake = behaviour(release)
    prog.update(release=release, fatal_at=None, started_at=time.time())
    if name in fake.get("fatal", []):
        prog.update(state="FATAL", pid=0)
        data["events"].append(["fatal", name, release])
        return 7, f"{name}: ERROR (spawn error)"
    data["next_pid"] += 1
    prog.update(state="RUNNING", pid=data["next_pid"])
    if name in fake.get("fatal_after", {}):
        prog["fatal_at"] = time.time() + fake["fatal_after"][name]
    data["events"].append(["start", name, release])
    return 0, f"{name}: started"


def stop(data: dict, name: str) -> tuple[int, str]:
    prog = data["programs"][name]
    if program_state(prog) != "RUNNING":
        return 0, f"{name}: ERROR (not running)"
    prog.update(state="STOPPED", pid=0)
    data["events"].append(["stop", name, prog.get("release")])
    return 0, f"{name}: stopped"


def changes(data: dict) -> dict[str, str]:
    now = definitions(current_release())
    found = {}
    for name, spec in now.items():
        if name not in data["programs"]:
            found[name] = "available"
        elif data["programs"][name]["def"] != spec["def"]:
            found[name] = "changed"
    for name in data["programs"]:
        if name not in now:
            found[name] = "disappeared"
    return found


def ctl(args: list[str]) -> int:
    command = "ctl " + " ".join(args)
    record(command)
    interrupted = maybe_pause(command)
    fake = behaviour(current_release())
    out, rc = [], 0
    with state() as data:
        progs = data["programs"]
        verb, names = args[0], args[1:]
        if verb == "status":
            for name in names or sorted(progs):
                if name not in progs:
                    out.append(f"{name}: ERROR (no such process)")
                    rc = 4
                    continue
                st = program_state(progs[name])
                info = f"pid {progs[name]['pid']}, uptime 0:00:01" if st == "RUNNING" else "-"
                out.append(f"{name:<33}{st:<10}{info}")
                rc = rc or (0 if st == "RUNNING" else 3)
        elif verb in ("start", "stop"):
            for name in names:
                code, line = (start if verb == "start" else stop)(data, name)
                rc, out = rc or code, [*out, line]
        elif verb == "pid":
            out.append(str(progs[names[0]]["pid"]))
        elif verb == "signal":
            if fake.get("hup_fails"):
                out.append(f"{names[1]}: ERROR (not running)")
                rc = 7
            else:
                data["events"].append(["signal", names[0], names[1]])
        elif verb == "reread":
            if fake.get("reread_fails"):
                out.append("ERROR: CANT_REREAD: a bad definition")
                rc = 1
            else:
                found = changes(data)
                out = [f"{n}: {what}" for n, what in sorted(found.items())]
                out = out or ["No config updates to processes"]
        elif verb == "update":
            found = changes(data)
            specs = definitions(current_release())
            for name in names or sorted(found):
                what = found.get(name)
                if what == "changed":
                    running = program_state(progs[name]) == "RUNNING"
                    if running:
                        stop(data, name)
                    progs[name]["def"] = specs[name]["def"]
                    if running or specs[name]["autostart"]:
                        start(data, name)
                        data["events"].append(["restart", name, current_release()])
                    out.append(f"{name}: updated process group")
                elif what == "available":
                    progs[name] = {"state": "STOPPED", "pid": 0, "def": specs[name]["def"]}
                    if specs[name]["autostart"]:
                        start(data, name)
                    out.append(f"{name}: added process group")
                elif what == "disappeared":
                    stop(data, name)
                    del progs[name]
                    out.append(f"{name}: removed process group")
        else:
            out.append(f"fake ctl: {verb} not supported")
            rc = 2
    print("\n".join(out))
    return 130 if interrupted else rc


# --- the releases' python -------------------------------------------------------------------------


def release_of(argv0: str) -> str:
    match = re.search(r"/releases/([^/]+)/", argv0)
    return match.group(1) if match else current_release()


def ready(data: dict) -> dict | None:
    """The worker's heartbeat, once it has "loaded its models"."""
    worker = data["programs"].get("worker")
    if not worker or program_state(worker) != "RUNNING":
        return None
    fake = behaviour(worker["release"])
    if fake.get("never_ready") or time.time() < worker["started_at"] + fake.get("ready_after", 0.3):
        return None
    return {"pid": worker["pid"], "started_at": worker["started_at"], "models": ["demo"]}


def python(argv0: str, args: list[str]) -> int:
    if args[:1] == ["-VV"]:
        print("Python 3.11.2 (fake)")
        return 0
    if args[:1] == ["-c"]:
        os.execv(sys.executable, [sys.executable, *args])
    if args[:2] == ["-m", "venv"]:
        bin_dir = Path(args[2]) / "bin"
        bin_dir.mkdir(parents=True)
        for name in ("python", "pip"):
            (bin_dir / name).write_text(os.environ["FAKE_PYTHON_WRAPPER"].replace("TOOL", name))
            (bin_dir / name).chmod(0o755)
        return 0
    if args[:2] == ["-m", "compileall"]:
        return 0
    assert args[:2] == ["-m", "model"], args
    release = release_of(argv0)
    fake = behaviour(release)
    command = f"python {' '.join(args[2:])} ({release})"
    record(command)
    interrupted = maybe_pause(command)
    cmd = args[2]
    rc = 0
    if cmd == "init":
        if fake.get("init_fails"):
            print("init: failed", file=sys.stderr)
            rc = 1
        elif ROLE != "worker":
            template = PREFIX / "releases" / release / "config" / "nginx" / "scriptorium.conf"
            (RUN / "nginx.conf").write_text(template.read_text())
            if not (RUN / "upstream.sock").is_symlink():
                (RUN / "upstream.sock").symlink_to("gunicorn.sock")
    elif cmd == "smoke":
        if fake.get("smoke_fails"):
            print("smoke check failed: app_answers: boom", file=sys.stderr)
            rc = 1
    elif cmd == "upstream":
        tmp = RUN / ".upstream.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(f"{args[3]}.sock")
        tmp.replace(RUN / "upstream.sock")
    elif cmd == "workers":
        if fake.get("no_workers_cmd"):
            return 2
        if "--help" in args:
            return 0
        since = float(args[args.index("--since") + 1])
        parent = int(args[args.index("--parent") + 1])
        with state() as data:
            beat = ready(data)
        rc = 0 if beat and beat["pid"] == parent and beat["started_at"] >= since else 1
    else:
        print(f"fake python: model {cmd} not supported", file=sys.stderr)
        rc = 2
    return 130 if interrupted else rc


def curl(args: list[str]) -> int:
    fail = "-f" in args or "-sf" in args
    out = None
    socket = None
    url = args[-1]
    for i, arg in enumerate(args):
        if arg == "--unix-socket":
            socket = args[i + 1]
        elif arg == "-o":
            out = args[i + 1]
    with state() as data:
        progs = data["programs"]
        if socket:
            prog = progs.get(SOCKETS.get(Path(socket).name, ""), {})
            if not prog or program_state(prog) != "RUNNING":
                return 7
            status, body = 200, {"status": "ok"}
        elif url.endswith("/readyz"):
            link = os.readlink(RUN / "upstream.sock")
            prog = progs.get(SOCKETS[link], {})
            if not prog or program_state(prog) != "RUNNING":
                status, body = 502, {"error": {"code": "upstream_unavailable"}}
            else:
                beat = ready(data)
                if beat and not behaviour(prog["release"]).get("never_ready"):
                    status, body = 200, {"status": "ready", "redis": True, "workers": [beat]}
                else:
                    status, body = 503, {"error": {"code": "not_ready"}}
        else:
            return 6
    if status >= 400 and fail:
        return 22
    if out != "/dev/null":
        print(json.dumps(body))
    return 0


def main() -> int:
    tool, rest = sys.argv[1], sys.argv[2:]
    if tool == "ctl":
        return ctl(rest)
    if tool == "python":
        return python(rest[0], rest[1:])
    if tool == "pip":
        command = "pip " + " ".join(rest[1:])
        record(command)
        return 130 if maybe_pause(command) else 0
    if tool == "curl":
        return curl(rest)
    raise SystemExit(f"unknown fake tool {tool}")


if __name__ == "__main__":
    try:
        code = main()
        if code == 130:  # interrupted: done what it was doing, then die of SIGINT as python does
            sys.stdout.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    except Exception:
        import traceback

        with open(FAKE_DIR / "errors.log", "a") as fh:
            fh.write(f"{sys.argv}\n{traceback.format_exc()}\n")
        raise
    sys.exit(code)
