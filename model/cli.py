"""`python -m model ...`: set up the data dir, manage API keys, run and operate the stack;
`python -m model client ...` is the API's command-line client (model/client/), handed over before
anything of the service is imported so that it runs with only requests and rich installed."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.settings import Settings

DEV_KEY_PREFIX = "dev-"
WORKER_CONF = "supervisord-worker.conf"  # what `stack --role worker` runs


def _write_secret(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)


def init_data_dir(settings: Settings, role: str = "all") -> None:
    """Create the data dir layout and generate missing secrets (idempotent). A worker-only host
    generates nothing: Redis and its password, nginx and the tunnel are the main host's."""
    from model import frontdoor

    data = settings.data_path
    for sub in ("secrets", "redis", "logs", "run", "models"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(settings.secrets_dir, 0o700)
    if role == "worker":
        return
    password_file = settings.secrets_dir / "redis_password"
    if not password_file.exists():
        _write_secret(password_file, secrets.token_urlsafe(32) + "\n")
    password = settings.redis_password() or ""
    _write_secret(settings.secrets_dir / "redis.conf", f"requirepass {password}\n")
    frontdoor.ensure_spiped_key(settings)
    frontdoor.write_nginx_conf(settings)
    if not (settings.run_dir / frontdoor.UPSTREAM_LINK).is_symlink():
        frontdoor.point_upstream(settings)


def dev_key(settings: Settings) -> str:
    """The local development key: created on first use, kept in secrets/ (mode 0600)."""
    from model.keys import KeyStore

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
    from model.settings import PROJECT_ROOT

    return Path(os.environ.get("SC_HOME", PROJECT_ROOT))


def supervisor_env(settings: Settings) -> dict[str, str]:
    """Values supervisord.conf refers to as %(ENV_SC_*)s."""
    from model import frontdoor

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
    }


def _exec(argv: list[str], settings: Settings) -> None:
    os.chdir(home())
    os.execvpe(argv[0], argv, {**os.environ, **supervisor_env(settings)})


def cmd_stack(args: argparse.Namespace, settings: Settings) -> None:
    from model import frontdoor

    bin_dir = Path(sys.prefix) / "bin"
    if args.role == "worker":
        init_data_dir(settings, "worker")
        if settings.redis_password() is None:
            print(
                "warning: no Redis password (set SCRIPTORIUM_REDIS__PASSWORD or copy the main "
                "host's secrets/redis_password here)",
                file=sys.stderr,
            )
        conf = str(home() / WORKER_CONF)
        _exec([str(bin_dir / "supervisord"), "-n", "-c", conf], settings)
    init_data_dir(settings)
    # A release interrupted half-way may have left nginx pointed at gunicorn-next, which
    # supervisord does not start: point it back at `gunicorn`.
    frontdoor.point_upstream(settings)
    if args.print_key:
        key = dev_key(settings)
        base = f"http://{settings.http.host}:{settings.http.port}"
        print(f"\nScriptorium starting on {base}  (Ctrl-C stops everything)\n")
        print(f"API key: {key}\n")
        print("Try it once the worker is ready (curl " + base + "/readyz):")
        print(f'  curl -H "X-API-Key: {key}" -F type=detect -F images=@page.jpg {base}/task')
        print(f'  curl -H "X-API-Key: {key}" {base}/status/<task_id>')
        print(f'  curl -X DELETE -H "X-API-Key: {key}" {base}/terminate/<task_id>')
        print(f"API docs: {base}/openapi\n", flush=True)
    _exec([str(bin_dir / "supervisord"), "-n", "-c", str(home() / "supervisord.conf")], settings)


def cmd_ctl(args: argparse.Namespace, settings: Settings) -> None:
    bin_dir = Path(sys.prefix) / "bin"
    conf = str(home() / "supervisord.conf")
    _exec([str(bin_dir / "supervisorctl"), "-c", conf, *args.ctl_args], settings)


def cmd_init(args: argparse.Namespace, settings: Settings) -> None:
    init_data_dir(settings)
    print(f"data dir ready: {settings.data_path}")


def cmd_spiped_key(args: argparse.Namespace, settings: Settings) -> None:
    from model import frontdoor

    if frontdoor.ensure_spiped_key(settings, rotate=args.rotate):
        print(f"new spiped key: {settings.spiped_key}", file=sys.stderr)
    print(settings.spiped_key)


def cmd_upstream(args: argparse.Namespace, settings: Settings) -> None:
    from model import frontdoor

    frontdoor.point_upstream(settings, f"{args.program}.sock")
    print(f"nginx now sends new requests to {args.program}")


def cmd_smoke(args: argparse.Namespace, settings: Settings) -> None:
    from model.smoke import run_smoke_checks

    failures = run_smoke_checks(settings)
    for failure in failures:
        print(f"smoke check failed: {failure}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print("smoke checks passed")


def cmd_keys(args: argparse.Namespace, settings: Settings) -> None:
    from model.keys import KeyStore, KeyStoreError

    settings.data_path.mkdir(parents=True, exist_ok=True)
    store = KeyStore(settings.keys_db)
    try:
        if args.keys_cmd == "create":
            if args.rate:
                _check_rate(args.rate)
            print(store.create(args.name, args.admin, args.max_queued, args.rate))
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
    stack.add_argument(
        "--role",
        choices=["all", "worker"],
        default="all",
        help="all: redis, worker, gunicorn, nginx (default); worker: the worker alone, for a "
        "host whose Redis is another's (redis.host/port/password)",
    )
    stack.set_defaults(func=cmd_stack)
    ctl = sub.add_parser("ctl", help="supervisorctl for the running stack, e.g. `ctl status`")
    ctl.add_argument("ctl_args", nargs=argparse.REMAINDER)
    ctl.set_defaults(func=cmd_ctl)
    sub.add_parser("init", help="create the data dir and secrets").set_defaults(func=cmd_init)
    spiped_key = sub.add_parser("spiped-key", help="create (or --rotate) the tunnel key")
    spiped_key.add_argument("--rotate", action="store_true", help="replace it with a new one")
    spiped_key.set_defaults(func=cmd_spiped_key)
    upstream = sub.add_parser("upstream", help="which gunicorn nginx sends new requests to")
    upstream.add_argument("program", choices=["gunicorn", "gunicorn-next"])
    upstream.set_defaults(func=cmd_upstream)
    smoke = sub.add_parser("smoke", help="checks a release must pass before it goes live")
    smoke.set_defaults(func=cmd_smoke)
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once)")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="may list and stop all tasks")
    create.add_argument("--max-queued", type=int, help="queued tasks allowed at once")
    create.add_argument("--rate", help="request rate limit, e.g. '10/second'")
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
    manifest = sub.add_parser(
        "manifest", help="show what a task would fetch for a IIIF manifest (URL or file)"
    )
    manifest.add_argument("source", help="manifest or collection: http(s) URL or JSON file")
    manifest.add_argument("--max-side", type=int, help="longest side analysed (px)")
    manifest.set_defaults(func=cmd_manifest)
    # Listed for --help only: main() hands `client ...` over before parsing.
    sub.add_parser(
        "client",
        help="command-line client of the API: submit, status, wait, result, cancel, list",
        add_help=False,
    ).add_argument("client_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:
        from model.client import main as client_main

        sys.exit(client_main(argv[1:]))
    from model.settings import get_settings

    args = build_parser().parse_args(argv)
    args.func(args, get_settings())
