"""`python -m model ...`: set up the data dir, manage API keys, run and operate the stack;
`python -m model client ...` is the API's command-line client (client/), handed over by
model/__main__.py before anything of the service is imported (only requests and rich needed)."""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import secrets
import socket
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from model import frontdoor, models_cli
from model.keys import KeyStore, KeyStoreError
from model.settings import PROJECT_ROOT, Settings, get_settings

DEV_KEY_PREFIX = "dev-"


def _write_secret(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)


class SetupError(SystemExit):
    """A setup step that cannot go on: the message says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def init_data_dir(settings: Settings) -> None:
    """Create the data dir layout and generate missing secrets (idempotent)."""
    data = settings.data_path
    for sub in ("secrets", "redis", "logs", "uploads", "run", "models"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(settings.secrets_dir, 0o700)
    if not settings.installation_file.exists():
        settings.installation_file.write_text(secrets.token_hex(8) + "\n")
    password_file = settings.secrets_dir / "redis_password"
    if settings.role == "worker":
        # Redis is the API host's: its password and the tunnel key come from there (a secret
        # made up here would only fail later, as an authentication error).
        missing = [
            str(path)
            for path in (password_file, settings.redis_tunnel_key)
            if not path.exists() and not (path == password_file and settings.redis.password)
        ]
        if missing:
            raise SetupError(
                f"a worker host needs the API host's Redis password and tunnel key; missing "
                f"{', '.join(missing)} (cloudvps_setup.sh --role worker --redis-secrets-from FILE)"
            )
        return
    if not password_file.exists():
        _write_secret(password_file, secrets.token_urlsafe(32) + "\n")
    password = settings.redis_password() or ""
    _write_secret(settings.secrets_dir / "redis.conf", f"requirepass {password}\n")
    frontdoor.ensure_spiped_key(settings)
    if settings.role == "api":
        frontdoor.ensure_key(settings.redis_tunnel_key)
    frontdoor.write_nginx_conf(settings)
    if not (settings.run_dir / frontdoor.UPSTREAM_LINK).is_symlink():
        frontdoor.point_upstream(settings)


def dev_key(settings: Settings) -> str:
    """The local development key: created on first use, kept in secrets/ (mode 0600)."""
    path = settings.secrets_dir / "dev_api_key"
    store = KeyStore(settings.keys_db)
    if path.exists():
        key = path.read_text().strip()
        if store.owner_of(key):
            return key
    key = store.create(f"{DEV_KEY_PREFIX}{int(time.time())}")
    _write_secret(path, key + "\n")
    return key


def home() -> Path:
    """The code supervisord's programs run. A deployment sets SC_HOME=<prefix>/current (and
    SC_VENV=<prefix>/current/.venv), so a restarted program runs the release `current` points to
    at that moment; by default it is this checkout."""
    return Path(os.environ.get("SC_HOME", PROJECT_ROOT))


# The supervisord config of each role: the same [supervisord] sections, each including the
# programs that role runs (config/supervisor/*.conf, plus api-host/ or worker-host/).
SUPERVISOR_CONFS = {
    "all": "supervisord.conf",
    "api": "supervisord-api.conf",
    "worker": "supervisord-worker.conf",
}


def supervisor_conf(settings: Settings) -> Path:
    return home() / SUPERVISOR_CONFS[settings.role]


def _spiped_host(host: str) -> str:
    """spiped's [address] form for an IP address (a bare IPv6 address would be ambiguous); a host
    name stays as it is."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{host}]"


def supervisor_env(settings: Settings) -> dict[str, str]:
    """Values supervisord.conf refers to as %(ENV_SC_*)s."""
    redis = settings.redis
    return {
        "SC_HOME": str(home()),
        "SC_VENV": os.environ.get("SC_VENV", sys.prefix),
        "SC_DATA": str(settings.data_path),
        "SC_REDIS_PORT": str(settings.redis.port),
        "SC_CONCURRENCY": str(settings.worker.concurrency),
        "SC_NGINX": frontdoor.find_binary("nginx"),
        "SC_NGINX_CONF": str(frontdoor.nginx_conf_path(settings)),
        # supervisord cannot make a program conditional, but autostart can come from here.
        "SC_SPIPED_AUTOSTART": "true" if settings.spiped.enabled else "false",
        "SC_SPIPED": frontdoor.find_binary("spiped"),
        "SC_SPIPED_LISTEN": settings.spiped.listen,
        "SC_SPIPED_TARGET": settings.spiped_target,
        "SC_SPIPED_KEY": str(settings.spiped_key),
        # The Redis tunnel (config/supervisor/api-host/, worker-host/): the server end hands
        # connections to Redis on loopback; the client end listens where the worker expects
        # Redis and carries them to redis_tunnel.server.
        "SC_REDIS_TUNNEL_LISTEN": settings.redis_tunnel.listen,
        "SC_REDIS_TUNNEL_TARGET": f"[127.0.0.1]:{redis.port}",
        "SC_REDIS_TUNNEL_CLIENT_LISTEN": f"{_spiped_host(redis.host)}:{redis.port}",
        "SC_REDIS_TUNNEL_SERVER": settings.redis_tunnel.server,
        "SC_REDIS_TUNNEL_KEY": str(settings.redis_tunnel_key),
        # Not for supervisord.conf: inherited by the programs. torch's compiled kernels stay in
        # the data dir (by default /tmp/torchinductor_<user>, outside the installation).
        "TORCHINDUCTOR_CACHE_DIR": str(settings.data_path / "cache" / "torchinductor"),
    }


def _exec(argv: list[str], settings: Settings) -> None:
    os.chdir(home())
    env = {**os.environ, **supervisor_env(settings)}
    if env.get("SC_ENV_FILE"):
        # An installation: its programs read the settings file as they start
        # (scripts/with_settings.sh), so none of its values stay in supervisord's environment
        # (read once): an edited or removed line applies at the program's next start.
        env = {k: v for k, v in env.items() if not k.startswith("SCRIPTORIUM_")}
    os.execvpe(argv[0], argv, env)


def cmd_supervisord_env(args: argparse.Namespace, settings: Settings) -> None:
    """The values supervisord took at its start (ports, paths: in its programs' command lines)
    that the settings now give otherwise: they apply only when supervisord itself restarts."""
    try:
        raw = Path(f"/proc/{args.pid}/environ").read_bytes()
    except OSError as exc:
        sys.exit(f"error: supervisord's environment (pid {args.pid}): {exc}")
    running = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    fresh = supervisor_env(settings)
    stale = [name for name, value in fresh.items() if running.get(name, value) != value]
    if os.environ.get("SC_ENV_FILE") and "SC_ENV_FILE" not in running:
        stale.append("SC_ENV_FILE")  # started before programs read the settings file themselves
    for name in stale:
        print(name)


def cmd_stack(args: argparse.Namespace, settings: Settings) -> None:
    init_data_dir(settings)
    if settings.role == "worker" and not settings.redis_tunnel.server:
        raise SetupError("role worker needs redis_tunnel.server (the API host's tunnel, host:port)")
    if settings.role != "worker":
        # A release interrupted half-way may have left nginx pointed at gunicorn-next, which
        # supervisord does not start: point it back at `gunicorn`.
        frontdoor.point_upstream(settings)
    if args.print_key and settings.role != "worker":
        key = dev_key(settings)
        base = f"http://{settings.http.host}:{settings.http.port}"
        print(f"\nScriptorium starting on {base}  (Ctrl-C stops everything)\n")
        print(f"API key: {key}\n")
        print("Try it once the worker is ready (curl " + base + "/readyz):")
        print(f'  curl -H "X-API-Key: {key}" -F type=detect -F images=@page.jpg {base}/task')
        print(f'  curl -H "X-API-Key: {key}" {base}/status/<task_id>')
        print(f'  curl -X DELETE -H "X-API-Key: {key}" {base}/terminate/<task_id>')
        print(f"API docs: {base}/openapi\n", flush=True)
    bin_dir = Path(sys.prefix) / "bin"
    _exec([str(bin_dir / "supervisord"), "-n", "-c", str(supervisor_conf(settings))], settings)


def cmd_ctl(args: argparse.Namespace, settings: Settings) -> None:
    bin_dir = Path(sys.prefix) / "bin"
    conf = str(supervisor_conf(settings))
    _exec([str(bin_dir / "supervisorctl"), "-c", conf, *args.ctl_args], settings)


def cmd_init(args: argparse.Namespace, settings: Settings) -> None:
    init_data_dir(settings)
    print(f"data dir ready: {settings.data_path}")


def cmd_spiped_key(args: argparse.Namespace, settings: Settings) -> None:
    path = settings.redis_tunnel_key if args.redis else settings.spiped_key
    if args.redis and settings.role == "worker":
        sys.exit("error: a worker host's Redis tunnel key comes from the API host (worker-secrets)")
    if frontdoor.ensure_key(path, rotate=args.rotate):
        print(f"new spiped key: {path}", file=sys.stderr)
    print(path)


WORKER_SECRETS_HEADER = "# Scriptorium worker-host secrets"


def cmd_worker_secrets(args: argparse.Namespace, settings: Settings) -> None:
    """What a worker host needs from this API host: the Redis password and the Redis tunnel key,
    as one small text file for `cloudvps_setup.sh --role worker --redis-secrets-from FILE`."""
    if settings.role != "api":
        sys.exit(f"error: this host's role is {settings.role!r}: worker hosts need an API host")
    password = settings.redis_password()
    key = settings.redis_tunnel_key
    if not password or not key.exists():
        sys.exit("error: no Redis password or tunnel key yet (python -m model init)")
    out = os.fstat(sys.stdout.fileno())
    if stat.S_ISREG(out.st_mode) and out.st_mode & 0o077:
        # `worker-secrets > FILE` under the usual umask: readable by all, until a chmod.
        sys.exit(
            "error: the file receiving the secrets is readable by others: "
            "(umask 077; scriptorium worker-secrets > FILE)"
        )
    print(f"{WORKER_SECRETS_HEADER} (keep it private: mode 0600, delete it once installed)")
    print(f"redis_password={password}")
    print(f"redis_tunnel_key={base64.b64encode(key.read_bytes()).decode()}")


def cmd_workers(args: argparse.Namespace, settings: Settings) -> None:
    """Worker processes with their models loaded, every host's, from their heartbeats in Redis.
    Exit status 1 when none matches (release.sh waits on that), 2 when Redis cannot be read."""
    from redis import Redis, RedisError

    from model.keyspace import WORKERS_PREFIX

    redis = Redis.from_url(
        settings.redis_url(), decode_responses=True, socket_timeout=5, socket_connect_timeout=5
    )
    try:
        keys = sorted(redis.scan_iter(match=f"{WORKERS_PREFIX}*", count=100))
        values = redis.mget(keys) if keys else []
    except RedisError as exc:
        where = f"{settings.redis.host}:{settings.redis.port}"
        print(f"error: redis at {where}: {exc}", file=sys.stderr)
        sys.exit(2)
    rows = []
    for key, raw in zip(keys, values, strict=True):
        try:
            beat = json.loads(raw) if raw else None
        except ValueError:
            beat = None
        if not isinstance(beat, dict):
            continue
        # The key names the worker (worker.name, default the host name); "host" is the machine's.
        rows.append({**beat, "name": key[len(WORKERS_PREFIX) :].rpartition(":")[0]})
    if args.taken is not None:
        sys.exit(_name_taken(args.taken, rows, settings.installation_id()))
    if args.since is not None:
        rows = [row for row in rows if float(row.get("started_at") or 0) >= args.since]
    if args.parent is not None:
        here = settings.worker_name
        rows = [
            row
            for row in rows
            if row["name"] == here and _descends_from(row.get("pid"), args.parent)
        ]
    if args.json:
        print(json.dumps(rows))
    for row in [] if args.json else rows:
        started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(row.get("started_at") or 0))
        models = ",".join(row.get("models") or [])
        print(
            f"{row['name']}\thost {row.get('host')}\tpid {row.get('pid')}\tstarted {started}"
            f"\tmodels {models}\t{row.get('role', 'worker')}"
        )
    sys.exit(0 if rows else 1)


def _name_taken(name: str, rows: list[dict[str, object]], installation: str) -> int:
    """3 when a live worker of another installation (another host) already goes by `name`:
    two hosts under one name could not be told apart, nor their tasks' leases."""
    here = socket.gethostname()
    others = sorted(
        {
            str(row.get("host"))
            for row in rows
            if row["name"] == name
            # (heartbeats of releases before installation ids: told apart by their machine)
            and row.get("installation", installation if row.get("host") == here else None)
            != installation
        }
    )
    if others:
        print(
            f"error: worker name {name!r} is in use by a live worker of another installation "
            f"(host {', '.join(others)}): give this host its own (--worker-name)",
            file=sys.stderr,
        )
        return 3
    return 0


def _descends_from(pid: object, parent: int) -> bool:
    """pid is `parent` or its child (a worker's pool processes are children of its main one)."""
    if not isinstance(pid, int):
        return False
    if pid == parent:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat.rpartition(")")[2].split()
    return len(fields) > 1 and fields[1] == str(parent)


def cmd_upstream(args: argparse.Namespace, settings: Settings) -> None:
    frontdoor.point_upstream(settings, f"{args.program}.sock")
    print(f"nginx now sends new requests to {args.program}")


def cmd_smoke(args: argparse.Namespace, settings: Settings) -> None:
    from model.smoke import run_smoke_checks

    failures = run_smoke_checks(settings, redis=not args.no_redis)
    for failure in failures:
        print(f"smoke check failed: {failure}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print("smoke checks passed")


def cmd_keys(args: argparse.Namespace, settings: Settings) -> None:
    from model.keys import KeyStore

    settings.data_path.mkdir(parents=True, exist_ok=True)
    store = KeyStore(settings.keys_db)
    try:
        if args.keys_cmd == "create":
            if args.rate:
                _check_rate(args.rate)
            print(store.create(args.name, args.admin, args.max_queued, args.rate, args.max_running))
            print(f"(key {args.name!r} is shown once; store it now)", file=sys.stderr)
        elif args.keys_cmd == "rotate":
            print(store.rotate(args.name))
            print(f"(new key for {args.name!r}; the old one no longer works)", file=sys.stderr)
        elif args.keys_cmd == "webhook-secret":
            secret, new = store.webhook_secret(args.name, rotate=args.rotate)
            print(secret)
            if args.rotate:
                grace = settings.webhooks.rotation_grace_s
                print(
                    f"(new webhook secret for {args.name!r}; deliveries carry a signature with "
                    f"the old one too for {grace:g} s)",
                    file=sys.stderr,
                )
            elif new:
                print(
                    f"(new webhook secret for {args.name!r}: give it to the key's holder)",
                    file=sys.stderr,
                )
        elif args.keys_cmd == "revoke":
            store.revoke(args.name)
            print(f"revoked {args.name}")
        else:
            for key in store.list():
                status = "active" if key.active else "revoked"
                extras = [
                    "admin" if key.admin else "",
                    f"max_queued={key.max_queued}" if key.max_queued is not None else "",
                    f"rate={key.rate_limit}" if key.rate_limit else "",
                    f"max_running={key.max_running}" if key.max_running is not None else "",
                    "webhook-secret" if store.has_webhook_secret(key.name) else "",
                ]
                print("\t".join([key.name, f"...{key.hint}", status, *filter(None, extras)]))
    except KeyStoreError as exc:
        sys.exit(f"error: {exc}")


def _check_rate(rate: str) -> None:
    from limits import parse_many

    try:
        parse_many(rate)
    except ValueError:
        sys.exit(f"error: {rate!r} is not a rate such as '10/second' or '100 per minute'")


def cmd_manifest(args: argparse.Namespace, settings: Settings) -> None:
    """Print what a detect task would fetch for a manifest (no image is downloaded)."""
    import json

    from model.iiif.loader import ManifestError
    from model.iiif.preview import preview
    from model.inference.registry import discover
    from model.jobs.detect import MAX_SIDE_FACTOR

    default = discover(settings.model_dirs).get(settings.models.default)
    imgsz = default.imgsz if default else 640
    max_side = args.max_side or imgsz * MAX_SIDE_FACTOR
    try:
        report = preview(args.source, settings, max_side, min(max_side, imgsz))
    except ManifestError as exc:
        print(json.dumps({"error": {"code": exc.code, "message": exc.message}}, indent=2))
        sys.exit(2)
    print(json.dumps(report, indent=2, ensure_ascii=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    stack = sub.add_parser("stack", help="run redis, worker and gunicorn under supervisord")
    stack.add_argument("--print-key", action="store_true", help="print a dev API key and curl")
    stack.set_defaults(func=cmd_stack)
    ctl = sub.add_parser("ctl", help="supervisorctl for the running stack, e.g. `ctl status`")
    ctl.add_argument("ctl_args", nargs=argparse.REMAINDER)
    ctl.set_defaults(func=cmd_ctl)
    sub.add_parser("init", help="create the data dir and secrets").set_defaults(func=cmd_init)
    spiped_key = sub.add_parser("spiped-key", help="create (or --rotate) the tunnel key")
    spiped_key.add_argument("--rotate", action="store_true", help="replace it with a new one")
    spiped_key.add_argument(
        "--redis", action="store_true", help="the Redis tunnel's key (API host), not the front's"
    )
    spiped_key.set_defaults(func=cmd_spiped_key)
    upstream = sub.add_parser("upstream", help="which gunicorn nginx sends new requests to")
    upstream.add_argument("program", choices=["gunicorn", "gunicorn-next"])
    upstream.set_defaults(func=cmd_upstream)
    smoke = sub.add_parser("smoke", help="checks a release must pass before it goes live")
    smoke.add_argument(
        "--no-redis",
        action="store_true",
        help="worker host: skip the Redis check (the tunnel is not up before the first start)",
    )
    smoke.set_defaults(func=cmd_smoke)
    secrets_cmd = sub.add_parser(
        "worker-secrets", help="API host: the Redis password and tunnel key for worker hosts"
    )
    secrets_cmd.set_defaults(func=cmd_worker_secrets)
    stale = sub.add_parser(
        "supervisord-env", help="supervisord's start-time values the settings now change"
    )
    stale.add_argument("--pid", type=int, required=True, help="supervisord's pid")
    stale.set_defaults(func=cmd_supervisord_env)
    workers = sub.add_parser("workers", help="workers with their models loaded (every host)")
    workers.add_argument("--since", type=float, help="only those started at/after (epoch s)")
    workers.add_argument(
        "--parent", type=int, help="only this host's, of the worker whose main process is PID"
    )
    workers.add_argument("--json", action="store_true", help="one JSON list")
    workers.add_argument(
        "--taken",
        metavar="NAME",
        help="exit 3 if a live worker of another installation goes by NAME (setup's check)",
    )
    workers.set_defaults(func=cmd_workers)
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="may list and stop all tasks")
    create.add_argument("--max-queued", type=int, help="queued tasks allowed at once")
    create.add_argument("--rate", help="request rate limit, e.g. '10/second'")
    create.add_argument(
        "--max-running",
        type=int,
        help="its tasks running at once (0: no cap; default: worker.key_running_max)",
    )
    for name in ("rotate", "revoke"):
        keys_sub.add_parser(name).add_argument("name")
    keys_sub.add_parser("list")
    secret = keys_sub.add_parser(
        "webhook-secret",
        help="show a key's webhook signing secret (created on first use); --rotate replaces it",
    )
    secret.add_argument("name")
    secret.add_argument("--rotate", action="store_true", help="replace it with a new one")
    keys.set_defaults(func=cmd_keys)
    models_cli.add_parser(sub)
    manifest = sub.add_parser(
        "manifest", help="show what a task would fetch for a IIIF manifest (URL or file)"
    )
    manifest.add_argument("source", help="manifest or collection: http(s) URL or JSON file")
    manifest.add_argument("--max-side", type=int, help="longest side analysed (px)")
    manifest.set_defaults(func=cmd_manifest)
    # Listed for --help only: model/__main__.py hands `client ...` over before importing this.
    sub.add_parser(
        "client",
        help="command-line client of the API: submit, status, wait, result, cancel, list",
        add_help=False,
    ).add_argument("client_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:
        from client import main as client_main

        sys.exit(client_main(argv[1:]))
    args = build_parser().parse_args(argv)
    args.func(args, get_settings())
