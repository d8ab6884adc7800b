"""The keyspace has one home (model/keyspace.py) and the task core's Lua scripts name their keys
and args: neither can drift the way positional KEYS lists and hand-built `sc:` names did."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import redis as redis_module

from model.tasks.scripts import LUA_DIR, LuaScript, _parse

MODEL = Path(__file__).resolve().parents[2] / "model"
# JSON-LD types of IIIF Presentation 2 (`sc:Manifest`...), not Redis keys.
IIIF_TYPE = re.compile(r"^sc:[A-Z]")


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append((node.lineno, node.value))
    return found


def test_no_module_but_the_keyspace_writes_a_redis_key_prefix() -> None:
    offenders = [
        f"{path.relative_to(MODEL.parent)}:{line}: {value!r}"
        for path in sorted(MODEL.rglob("*.py"))
        if path.name != "keyspace.py"
        for line, value in _string_constants(path)
        if value.startswith("sc:") and not IIIF_TYPE.match(value)
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("script", sorted(p.stem for p in LUA_DIR.glob("*.lua")))
def test_a_script_uses_only_the_keys_and_args_it_declares(script: str) -> None:
    keys, args, body = _parse(script)
    text = (LUA_DIR / f"{script}.lua").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    used_keys = set(re.findall(r"\bK\.(\w+)", code))
    used_args = set(re.findall(r"\bA\.(\w+)", code))
    assert used_keys <= set(keys), used_keys - set(keys)
    assert used_args <= set(args), used_args - set(args)
    assert "KEYS[" not in code, "positional keys: name them in the header"
    assert len(set(keys)) == len(keys) and len(set(args)) == len(args)
    if script != "held":
        assert keys, "a script declares its keys"
        assert body.startswith("local K = {")


def test_a_call_that_names_its_keys_wrongly_is_refused_before_redis_is_asked() -> None:
    client = redis_module.Redis(host="127.0.0.1", port=1)  # nothing listens: never reached
    renew = LuaScript(client, "renew")
    with pytest.raises(TypeError, match=r"renew.lua keys: missing \['lease'\]"):
        renew(keys={"record": "k"}, args={"token": "t", "lease_ms": 1})
    with pytest.raises(TypeError, match=r"extra \['ttl'\]"):
        renew(keys={"record": "k", "lease": "l"}, args={"token": "t", "lease_ms": 1, "ttl": 2})
