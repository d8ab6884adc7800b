"""`python -m model client`: submit, status, wait, result, cancel, list."""

from __future__ import annotations

import argparse
import contextlib
import json
import mimetypes
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from client.errors import EXIT_HELP, STATE_EXIT, TERMINAL, ClientError, Exit
from client.http import DEFAULT_URL, Client, new_idempotency_key
from client.progress import counts, fmt_duration, make_view

PROG = "python -m model client"
URL_ENV, KEY_ENV = "SCRIPTORIUM_URL", "SCRIPTORIUM_KEY"
STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED")
POLL_MIN_S, POLL_MAX_S = 0.2, 5.0

DESCRIPTION = f"""\
A command-line client for a Scriptorium server: submit jobs, follow them, fetch their results.

The server: --url before the command, or ${URL_ENV} (default {DEFAULT_URL}).
The API key: --key or ${KEY_ENV} (prefer the variable: a --key shows in the process list).
--json prints one JSON document on stdout, for scripts; progress and messages go to stderr.
Requests that fail to connect or get 502/503/504 are retried with backoff (a submit carries
an Idempotency-Key, the same on each retry, so it never creates a task twice); a 429 is
retried after its Retry-After."""

EPILOG = f"""\
examples:
  export {URL_ENV}=http://127.0.0.1:5005 {KEY_ENV}=...
  %(prog)s submit page1.jpg page2.jpg --wait
  %(prog)s submit --url https://example.org/p1.jpg https://example.org/p2.jpg
  %(prog)s submit --manifest https://example.org/iiif/book/manifest \\
      --params '{{"confidence": 0.3}}'
  %(prog)s wait ID        (Ctrl-C asks whether to cancel the task)
  %(prog)s result ID --format iiif -o annotations.json
  %(prog)s list --state RUNNING --json

{EXIT_HELP}"""


class Parser(argparse.ArgumentParser):
    """Usage errors become ClientError(USAGE), so --json still gets its one document."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise ClientError(Exit.USAGE, f"{self.prog}: {message}")


def usage(message: str) -> NoReturn:
    raise ClientError(Exit.USAGE, message)


@dataclass
class Context:
    client: Client
    json: bool
    quiet: bool

    def emit(self, document: Any, text: str | None = None) -> None:
        """The command's output: the JSON document with --json, else the text (if any)."""
        if self.json:
            json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
            sys.stdout.write("\n")
        elif text is not None:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()

    def note(self, line: str) -> None:
        """A message for the person at the terminal (stderr), unless --quiet."""
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)


# --- submit ------------------------------------------------------------------------------------


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        usage(f"{option} is not valid JSON: {exc}")
    if not isinstance(value, dict):
        usage(f"{option} must be a JSON object, e.g. '{{\"confidence\": 0.3}}'")
    return value


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def _existing_file(text: str, what: str) -> Path:
    path = Path(text)
    if not path.is_file():
        hint = " (image URLs go after --url)" if "://" in text else ""
        usage(f"{what} {text!r} is not a readable file{hint}")
    if not os.access(path, os.R_OK):
        usage(f"{what} {text!r} is not readable")
    return path


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _schemas(doc: dict[str, Any], schema: Any, job_type: str, depth: int = 0) -> Iterator[dict]:
    """The object schemas a request of `job_type` may match, $refs followed."""
    if not isinstance(schema, dict) or depth > 20:
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        yield from _schemas(doc, target, job_type, depth + 1)
    for combinator in ("oneOf", "anyOf", "allOf"):
        for branch in schema.get(combinator) or []:
            yield from _schemas(doc, branch, job_type, depth + 1)
    properties = schema.get("properties")
    if isinstance(properties, dict):
        kind = properties.get("type") if isinstance(properties.get("type"), dict) else {}
        allowed = [kind["const"]] if "const" in kind else kind.get("enum")
        if allowed is None or job_type in allowed:
            yield schema


def accepts_field(doc: dict[str, Any], job_type: str, multipart: bool, field: str) -> bool:
    """Whether POST /task of this OpenAPI document takes `field` in a `job_type` request."""
    try:
        content = doc["paths"]["/task"]["post"]["requestBody"]["content"]
    except (KeyError, TypeError):
        return False
    media = content.get("multipart/form-data" if multipart else "application/json") or {}
    return any(field in s["properties"] for s in _schemas(doc, media.get("schema"), job_type))


@dataclass
class Submission:
    json_body: dict[str, Any] | None
    form: dict[str, str] | None
    uploads: list[tuple[str, Path, str]]  # (part, path, content type)

    def files(self) -> list[tuple[str, Any]]:
        return [(part, (path.name, path.open("rb"), ctype)) for part, path, ctype in self.uploads]


def build_submission(args: argparse.Namespace) -> Submission:
    params = _json_object(args.params, "--params")
    task_input = _json_object(args.input, "--input") or {}
    for url in args.image_urls:
        if not _is_url(url):
            usage(f"--url takes http(s) image URLs; {url!r} is not one (files go before --url)")
    task_input = {**task_input}
    if args.image_urls:
        task_input["image_urls"] = [*task_input.get("image_urls", []), *args.image_urls]
    manifest_urls = [m for m in args.manifests if _is_url(m)]
    if manifest_urls:
        task_input["manifest_urls"] = [*task_input.get("manifest_urls", []), *manifest_urls]
    uploads = [
        ("images", _existing_file(p, "image"), mimetypes.guess_type(p)[0] or "image/jpeg")
        for p in args.images
    ]
    uploads += [
        ("manifest", _existing_file(m, "manifest"), "application/ld+json")
        for m in args.manifests
        if not _is_url(m)
    ]
    if args.timeout is not None and args.timeout <= 0:
        usage("--timeout must be a positive number of seconds")
    if uploads and args.type != "detect":
        usage(f"uploads (files, a manifest file) are for detect tasks, not {args.type}")
    if args.type == "detect" and not uploads and not task_input:
        usage("nothing to submit: give image files, --url URL... or --manifest URL|FILE")
    if not uploads:
        body: dict[str, Any] = {"type": args.type}
        if task_input:
            body["input"] = task_input
        if params is not None:
            body["params"] = params
        if args.timeout is not None:
            body["timeout"] = _number(args.timeout)
        return Submission(body, None, [])
    form = {"type": args.type}
    if task_input:
        form["input"] = json.dumps(task_input)
    if params is not None:
        form["params"] = json.dumps(params)
    if args.timeout is not None:
        form["timeout"] = str(_number(args.timeout))
    return Submission(None, form, uploads)


def add_webhook(ctx: Context, args: argparse.Namespace, submission: Submission) -> None:
    if not _is_url(args.webhook):
        usage(f"--webhook takes an http(s) URL; {args.webhook!r} is not one")
    multipart = submission.form is not None
    doc = ctx.client.openapi()
    if not accepts_field(doc, args.type, multipart, "webhook"):
        how = "with uploads (multipart)" if multipart else "as JSON"
        usage(
            f"this server does not accept a webhook for {args.type} tasks sent {how} (its "
            f"OpenAPI document, {ctx.client.base_url}/openapi/openapi.json, has no 'webhook' "
            "in POST /task): leave out --webhook and follow the task with `wait`"
        )
    webhook = {"url": args.webhook}
    if submission.json_body is not None:
        submission.json_body["webhook"] = webhook
    else:
        assert submission.form is not None
        submission.form["webhook"] = json.dumps(webhook)


def cmd_submit(ctx: Context, args: argparse.Namespace) -> int:
    submission = build_submission(args)
    if args.webhook:
        add_webhook(ctx, args, submission)
    created = ctx.client.submit(
        idempotency_key=args.idempotency_key or new_idempotency_key(),
        json_body=submission.json_body,
        form=submission.form,
        files=submission.files if submission.uploads else None,
    )
    task_id = created["task_id"]
    if not args.wait:
        ctx.emit(created, task_id)
        return Exit.OK
    ctx.note(f"task {task_id} {created.get('state', 'QUEUED')}")
    return finish(ctx, wait_for(ctx, task_id))


# --- waiting -----------------------------------------------------------------------------------


def ask_cancel(task_id: str) -> bool:
    """Ask on the terminal whether to cancel; no terminal, end of input or a second Ctrl-C mean
    stop waiting and leave the task alone."""
    keeps = f"stopped waiting; task {task_id} keeps running"
    if not sys.stdin or not sys.stdin.isatty():
        raise ClientError(Exit.INTERRUPTED, keeps)
    try:
        sys.stderr.write(f"\ncancel task {task_id}? [y/N] ")
        sys.stderr.flush()
        line = sys.stdin.readline()
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise ClientError(Exit.INTERRUPTED, keeps) from None
    if not line:
        raise ClientError(Exit.INTERRUPTED, keeps)
    return line.strip().lower() in ("y", "yes")


@contextlib.contextmanager
def ctrl_c_heard() -> Iterator[None]:
    """A person at the terminal is asked on Ctrl-C: heard even when SIGINT came ignored (a
    parent's `trap '' INT`, a runner's background job), which Python keeps as it found it.
    Without a terminal the parent's choice stands."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if not (ignored and sys.stdin and sys.stdin.isatty()):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def wait_for(ctx: Context, task_id: str) -> dict[str, Any]:
    """Poll until the task ends, showing its progress on stderr; Ctrl-C offers to cancel it."""
    with ctrl_c_heard():
        return _poll(ctx, task_id)


def _poll(ctx: Context, task_id: str) -> dict[str, Any]:
    view = make_view(task_id, ctx.quiet)
    cancelling = False
    view.start()
    try:
        while True:
            try:
                status, retry_after = ctx.client.status(task_id)
                view.update(status, cancelling)
                if status.get("state") in TERMINAL:
                    return status
                time.sleep(min(POLL_MAX_S, max(POLL_MIN_S, retry_after or 1.0)))
            except KeyboardInterrupt:
                view.stop()
                if cancelling:
                    raise ClientError(
                        Exit.INTERRUPTED,
                        f"stopped waiting; task {task_id} is being cancelled",
                    ) from None
                if ask_cancel(task_id):
                    code, _ = ctx.client.cancel(task_id)
                    cancelling = code == 202
                    print(
                        f"cancelling task {task_id}" if cancelling else "it had already ended",
                        file=sys.stderr,
                        flush=True,
                    )
                else:
                    print("still waiting (Ctrl-C to ask again)", file=sys.stderr, flush=True)
                view.start()
    finally:
        view.stop()


def summary(status: dict[str, Any]) -> str:
    done, failed, total = counts(status)
    text = f"{status.get('state')}: {done}/{total} pages done, {failed} failed"
    error = status.get("error")
    if error:
        text += f" — {error.get('code')}: {error.get('message')}"
    for warning in status.get("warnings") or []:  # a limit cut the task: never silently
        text += f" — warning: {warning.get('message')}"
    return f"{text} (task {status.get('task_id')})"


def finish(ctx: Context, status: dict[str, Any]) -> int:
    ctx.emit(status, summary(status))
    return STATE_EXIT.get(str(status.get("state")), Exit.FAILED)


def cmd_wait(ctx: Context, args: argparse.Namespace) -> int:
    return finish(ctx, wait_for(ctx, args.task_id))


# --- status, result, cancel, list ---------------------------------------------------------------


def status_text(status: dict[str, Any]) -> str:
    done, failed, total = counts(status)
    rows = [
        ("task", status.get("task_id")),
        ("type", status.get("type")),
        ("state", status.get("state")),
        ("progress", f"{done}/{total} pages done, {failed} failed"),
    ]
    if status.get("queue_position") is not None:
        queue = f"position {status['queue_position']}"
        if status.get("eta_s") is not None:
            queue += f", starts in ~{fmt_duration(status['eta_s'])}"
        rows.append(("queue", queue))
    for name in ("created_at", "started_at", "finished_at", "expires_at"):
        if status.get(name):
            rows.append((name.removesuffix("_at"), status[name]))
    if status.get("error"):
        rows.append(("error", f"{status['error'].get('code')}: {status['error'].get('message')}"))
    for warning in status.get("warnings") or []:
        rows.append(("warning", warning.get("message")))
    result = status.get("result") or {}
    if result.get("items") is not None:
        found = sum(len(item.get("detections") or []) for item in result["items"])
        shown = len(result["items"])
        if result.get("items_total"):  # a big task's status shows its first items only
            text = f"{result['items_total']} items ({found} detections in the first {shown})"
        else:
            text = f"{shown} items, {found} detections"
        rows.append(("result", text))
    return "\n".join(f"{name:<9} {value}" for name, value in rows)


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    status, _ = ctx.client.status(args.task_id)
    ctx.emit(status, status_text(status))
    return STATE_EXIT.get(str(status.get("state")), Exit.FAILED)


def cmd_result(ctx: Context, args: argparse.Namespace) -> int:
    if args.output is None and args.format == "yolo" and sys.stdout.isatty():
        usage("format yolo is a zip file: give -o FILE (or redirect stdout)")
    if args.output is None and ctx.json and args.format == "yolo":
        usage("--json with format yolo needs -o FILE")
    response = ctx.client.result(args.task_id, args.format, args.manifest)
    if response.status_code == 202:
        state = (response.json() or {}).get("state", "RUNNING")
        raise ClientError(
            Exit.ACTIVE,
            f"task {args.task_id} is {state}: no result yet (`wait {args.task_id}` first)",
        )
    data = response.content
    if args.output is None:
        sys.stdout.buffer.write(data)
        if not data.endswith(b"\n") and args.format != "yolo":
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
        return Exit.OK
    path = Path(args.output)
    partial = path.with_name(f".{path.name}.part")
    try:
        partial.write_bytes(data)
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        usage(f"cannot write {path}: {exc.strerror or exc}")
    info = {"task_id": args.task_id, "format": args.format, "file": str(path), "bytes": len(data)}
    ctx.emit(info, f"wrote {path} ({len(data)} bytes, {args.format})")
    return Exit.OK


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    code, status = ctx.client.cancel(args.task_id)
    if args.wait and code == 202:
        ctx.note(f"cancelling task {args.task_id}")
        return finish(ctx, wait_for(ctx, args.task_id))
    state = status.get("state")
    text = (
        f"cancelling task {args.task_id} (was {state})"
        if code == 202
        else f"task {args.task_id} had already ended: {state}"
    )
    ctx.emit(status, text)
    return Exit.OK


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    if args.limit < 1:
        usage("--limit must be at least 1")
    tasks: list[dict[str, Any]] = []
    offset: int | None = 0
    total = 0
    while offset is not None and len(tasks) < args.limit:
        page = ctx.client.tasks(args.state, offset, min(100, args.limit - len(tasks)), args.all)
        tasks.extend(page.get("tasks") or [])
        total = int(page.get("total") or 0)
        offset = page.get("next_offset")
    lines = [f"{'TASK':<32}  {'STATE':<9}  {'TYPE':<10}  {'PAGES':>11}  {'FAILED':>6}  CREATED"]
    for task in tasks:
        done, failed, pages = counts(task)
        lines.append(
            f"{task.get('task_id', ''):<32}  {task.get('state', ''):<9}  "
            f"{task.get('type', ''):<10}  {f'{done}/{pages}':>11}  {failed:>6}  "
            f"{task.get('created_at') or ''}"
        )
    if len(tasks) < total:
        lines.append(f"({len(tasks)} of {total}; --limit N for more)")
    ctx.emit({"tasks": tasks, "total": total}, "\n".join(lines))
    return Exit.OK


# --- the command line ----------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _common(parser: argparse.ArgumentParser, top: bool, server_flags: Sequence[str]) -> None:
    """Options taken before the command (top) and after it (defaults suppressed there, so the
    one given before the command stands unless repeated after)."""
    default = (lambda value: value) if top else (lambda _value: argparse.SUPPRESS)
    group = parser.add_argument_group("server and output")
    group.add_argument(
        *server_flags,
        dest="server",
        metavar="URL",
        default=default(None),
        help=f"server address (default ${URL_ENV}, else {DEFAULT_URL})",
    )
    group.add_argument(
        "--key", default=default(None), help=f"API key (default ${KEY_ENV}; prefer the variable)"
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="one JSON document on stdout (progress and messages on stderr)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="no progress bar or messages on stderr (errors still)",
    )
    group.add_argument(
        "--retries",
        type=int,
        metavar="N",
        default=default(5),
        help="retries of a request on connection errors, 502/503/504 and 429 (default 5)",
    )


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, True, ("--url", "--server"))
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )

    def command(name: str, help_text: str, server_flags: Sequence[str] = ("--url", "--server")):
        cmd = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXIT_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(cmd, False, server_flags)
        return cmd

    submit = command(
        "submit",
        "submit a task (detect by default): image files, image URLs or IIIF manifests",
        server_flags=("--server",),  # here --url is an image URL
    )
    submit.add_argument("images", nargs="*", metavar="IMAGE", help="image files to upload")
    submit.add_argument(
        "--url",
        dest="image_urls",
        nargs="+",
        action="extend",
        default=[],
        metavar="URL",
        help="image URL(s) for the server to fetch (here --url is not the server: use --server "
        "or give --url before `submit`)",
    )
    submit.add_argument(
        "--manifest",
        dest="manifests",
        action="append",
        default=[],
        metavar="URL|FILE",
        help="a IIIF manifest or collection: a URL, or a JSON file to upload (repeatable)",
    )
    submit.add_argument("--type", default="detect", help="job type (default detect)")
    submit.add_argument("--params", metavar="JSON", help="job params, e.g. '{\"confidence\": 0.3}'")
    submit.add_argument(
        "--input", metavar="JSON", help="raw `input` object (e.g. similarity's documents)"
    )
    submit.add_argument(
        "--timeout", type=_positive_float, metavar="S", help="the task's time limit on the server"
    )
    submit.add_argument("--wait", action="store_true", help="wait for the task, as `wait` does")
    submit.add_argument(
        "--webhook",
        metavar="URL",
        help="ask the server to call URL when the task ends (if its API supports webhooks)",
    )
    submit.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="your own Idempotency-Key: running the same submit again returns the same task "
        "(default: a new one per run, reused across its retries)",
    )
    submit.set_defaults(func=cmd_submit)

    status = command("status", "show a task's state and progress (exit code by state)")
    status.add_argument("task_id", metavar="ID")
    status.set_defaults(func=cmd_status)

    wait = command("wait", "wait for a task with a progress bar; Ctrl-C asks whether to cancel it")
    wait.add_argument("task_id", metavar="ID")
    wait.set_defaults(func=cmd_wait)

    result = command("result", "fetch a finished task's result (stdout, or -o FILE)")
    result.add_argument("task_id", metavar="ID")
    result.add_argument("--format", choices=("json", "iiif", "yolo"), default="json")
    result.add_argument("-o", "--output", metavar="FILE", help="write it to FILE")
    result.add_argument(
        "--manifest", type=int, metavar="N", help="iiif: only the N-th manifest's annotations"
    )
    result.set_defaults(func=cmd_result)

    cancel = command("cancel", "cancel a task (DELETE /terminate)")
    cancel.add_argument("task_id", metavar="ID")
    cancel.add_argument("--wait", action="store_true", help="wait until it has stopped")
    cancel.set_defaults(func=cmd_cancel)

    listing = command("list", "list your tasks, newest first")
    listing.add_argument("--state", choices=STATES, type=str.upper)
    listing.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N tasks (default 20)"
    )
    listing.add_argument("--all", action="store_true", help="every key's tasks (admin key)")
    listing.set_defaults(func=cmd_list)
    return parser


def _report(error: ClientError, as_json: bool) -> None:
    print(f"error: {error.message}", file=sys.stderr, flush=True)
    if as_json:
        json.dump(error.as_json(), sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
        as_json = args.json
        key = args.key or os.environ.get(KEY_ENV) or None
        if not key:
            raise ClientError(Exit.AUTH, f"no API key: set ${KEY_ENV} or pass --key")
        server = args.server or os.environ.get(URL_ENV) or DEFAULT_URL
        if not _is_url(server):
            usage(f"the server address must be an http(s) URL, not {server!r}")
        if args.retries < 0:
            usage("--retries must be 0 or more")
        quiet = args.quiet
        client = Client(
            server,
            key,
            retries=args.retries,
            notice=(lambda line: None) if quiet else lambda line: print(line, file=sys.stderr),
        )
        return int(args.func(Context(client, as_json, quiet), args))
    except ClientError as error:
        _report(error, as_json)
        return int(error.exit_code)
    except KeyboardInterrupt:
        _report(ClientError(Exit.INTERRUPTED, "interrupted"), as_json)
        return int(Exit.INTERRUPTED)
    except BrokenPipeError:
        # stdout closed early (`| head`): nothing more to say, and nowhere to say it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(Exit.OK)
