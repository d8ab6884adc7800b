"""`python -m model models add|list|remove`: the imported models every worker host serves
(model/inference/catalog.py, docs/models.md). Run where Redis is reachable (the API host).

Exit status: 0 done, 1 refused (the message says why; nothing was published), 2 Redis unreachable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from redis import Redis, RedisError

from model.inference.catalog import Catalog, ModelStoreError, validate_name
from model.inference.registry import discover
from model.settings import Settings


def _catalog(settings: Settings) -> Catalog:
    redis = Redis.from_url(settings.redis_url(), socket_timeout=30, socket_connect_timeout=5)
    return Catalog(redis, settings.models.max_bytes)


def _add(args: argparse.Namespace, settings: Settings, catalog: Catalog) -> dict[str, Any]:
    from model.inference.offline import configure_offline

    if args.name:
        validate_name(args.name)
    configure_offline(settings.data_path / "ultralytics")
    from ultralytics.utils import LOGGER

    from model.inference.importer import inspect

    LOGGER.setLevel(logging.WARNING)  # stdout carries the card alone

    # The checks and the export work in a scratch folder, deleted whatever happens.
    with tempfile.TemporaryDirectory(prefix="model-import-") as work:
        card, blobs = inspect(
            Path(args.path), Path(work), settings.models.max_bytes, args.name, args.classes
        )
    if card["name"] in discover(settings.model_dirs):
        raise ModelStoreError(
            "model_exists", f"{card['name']!r} is a model shipped in models.dirs; pick another name"
        )
    catalog.publish(card, blobs)
    return card


def cmd_models(args: argparse.Namespace, settings: Settings) -> None:
    catalog = _catalog(settings)
    try:
        if args.models_cmd == "add":
            print(json.dumps(_add(args, settings, catalog), indent=2))
        elif args.models_cmd == "list":
            cards = catalog.cards()
            if args.json:
                print(json.dumps(list(cards.values())))
            for card in [] if args.json else cards.values():
                onnx = "onnx" if card.get("onnx_sha256") else "no onnx"
                classes = ",".join(card["classes"])
                owner = card.get("owner") or "everyone"
                print(
                    f"{card['name']}\t{card['sha256'][:12]}\t{card['size']} B\t{onnx}\t"
                    f"{classes}\t{owner}"
                )
        elif not catalog.remove(args.name):
            raise ModelStoreError("unknown_model", f"no imported model named {args.name!r}")
        else:
            print(f"removed {args.name}")
    except ModelStoreError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except RedisError as exc:
        print(
            f"error: redis at {settings.redis.host}:{settings.redis.port}: {exc}", file=sys.stderr
        )
        sys.exit(2)


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="import, list and remove models (every worker host)")
    models_sub = models.add_subparsers(dest="models_cmd", required=True)
    add = models_sub.add_parser("add", help="check a YOLO detection checkpoint and publish it")
    add.add_argument("path", help="local .pt file (YOLOv5u, v8, 11 detection weights)")
    add.add_argument("--name", help="model name (default: the file's stem)")
    add.add_argument("--classes", nargs="+", help="class names, in the model's class order")
    models_sub.add_parser("list", help="imported models").add_argument(
        "--json", action="store_true", help="one JSON list of cards"
    )
    models_sub.add_parser("remove", help="withdraw a model from every host").add_argument("name")
    models.set_defaults(func=cmd_models)
