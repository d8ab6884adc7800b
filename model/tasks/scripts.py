"""The task core's Lua scripts (model/tasks/lua/*.lua), called by name.

Each script declares its keys and args in its header (`--- keys: record items`, `--- args:
token item`, `--- uses: held` for a shared helper); the body reads them as `K.record`,
`A.token`, and any args past the named ones from `ARGV[REST]` on. A call names every key and
arg, so a call and its script cannot drift apart the way positional KEYS lists did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from redis import Redis

LUA_DIR = Path(__file__).with_name("lua")


class LuaScript:
    """One script of LUA_DIR, registered on a Redis client."""

    def __init__(self, redis: Redis, name: str) -> None:
        self.name = name
        self.keys, self.args, body = _parse(name)
        self._script = redis.register_script(body)

    @property
    def sha(self) -> str:
        return self._script.sha

    def __call__(
        self, keys: Mapping[str, Any], args: Mapping[str, Any], rest: Sequence[Any] = ()
    ) -> Any:
        return self._script(
            keys=self._ordered(keys, self.keys, "keys"), args=self._argv(args, rest)
        )

    def queue_on(
        self,
        pipe: Any,
        keys: Mapping[str, Any],
        args: Mapping[str, Any],
        rest: Sequence[Any] = (),
    ) -> None:
        """EVALSHA on a pipeline (shares its round trip; a Redis that lost its scripts answers
        NOSCRIPT there, which the caller handles)."""
        ordered = self._ordered(keys, self.keys, "keys")
        pipe.evalsha(self.sha, len(ordered), *ordered, *self._argv(args, rest))

    def _argv(self, args: Mapping[str, Any], rest: Sequence[Any]) -> list[Any]:
        return [*self._ordered(args, self.args, "args"), *rest]

    def _ordered(self, given: Mapping[str, Any], names: tuple[str, ...], what: str) -> list[Any]:
        if set(given) != set(names):
            missing, extra = set(names) - set(given), set(given) - set(names)
            raise TypeError(
                f"{self.name}.lua {what}: missing {sorted(missing)}, extra {sorted(extra)}"
            )
        return [given[name] for name in names]


@cache
def _parse(name: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(key names, arg names, the body with its prelude) of LUA_DIR/<name>.lua."""
    text = (LUA_DIR / f"{name}.lua").read_text()
    declared: dict[str, list[str]] = {"keys": [], "args": [], "uses": []}
    for line in text.splitlines():
        if line.startswith("--- "):
            field, _, value = line[4:].partition(":")
            declared[field.strip()] = value.split()
    keys, args = tuple(declared["keys"]), tuple(declared["args"])
    prelude = [
        "local K = {" + ", ".join(f"{k} = KEYS[{i}]" for i, k in enumerate(keys, 1)) + "}",
        "local A = {" + ", ".join(f"{a} = ARGV[{i}]" for i, a in enumerate(args, 1)) + "}",
        f"local REST = {len(args) + 1}",
    ]
    helpers = [(LUA_DIR / f"{used}.lua").read_text() for used in declared["uses"]]
    return keys, args, "\n".join([*prelude, *helpers, text])
