"""The Python <-> Lua contract (sidecar/queue/scripts.py) holds on both sides:
each script binds exactly the arguments Python sends, by name and in order, and
a reply with a field missing, unknown or moved fails loudly instead of shifting."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from sidecar.queue import keys
from sidecar.queue.engine import Engine, QueueRef
from sidecar.queue.scripts import CONSTANTS, SCRIPTS, TICK, ContractError, Script, source

BINDING = re.compile(r"^local (\w+) = .*\bARGV\[(\d+)\]")
LITERAL_ARGV = re.compile(r"\bARGV\[\d+\]")


def lua(name: str) -> str:
    return resources.files("sidecar.queue.lua").joinpath(f"{name}.lua").read_text()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_binds_its_arguments_by_name_on_its_first_lines(name: str) -> None:
    script = SCRIPTS[name]
    code = [ln for ln in lua(name).splitlines() if ln.strip() and not ln.startswith("--")]
    bound = [BINDING.match(ln) for ln in code[: len(script.args)]]
    assert [(m.group(1), int(m.group(2))) if m else None for m in bound] == [
        (arg, i) for i, arg in enumerate(script.args, 1)
    ]
    # anywhere else, arguments are read by name or from the variadic tail (REST)
    rest = "\n".join(code[len(script.args) :])
    assert not LITERAL_ARGV.findall(rest)
    assert ("ARGV" in rest) == bool(script.rest)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_shared_constants_come_from_python_only(name: str) -> None:
    for text in (lua(name), lua("prelude")):
        for constant in CONSTANTS:
            assert not re.search(rf"^local {constant}\b", text, re.M), constant
    header = SCRIPTS[name].header()
    assert f"local LIVE_BLOCK = {keys.LIVE_BLOCK}\n" in header
    assert f"local REST = {len(SCRIPTS[name].args) + 1}\n" in header


def test_python_refuses_a_call_or_reply_off_the_contract() -> None:
    with pytest.raises(ContractError, match="missing"):
        TICK.argv({"capacity": 1})
    full = dict.fromkeys(TICK.args, 0)
    with pytest.raises(ContractError, match="unknown"):
        TICK.argv({**full, "extra": 1})
    with pytest.raises(ContractError, match="variadic"):
        TICK.argv(full, [1, 2])
    assert len(TICK.argv(full)) == len(TICK.args)
    with pytest.raises(ContractError):
        TICK.decode([0] * (len(TICK.reply) - 1))


async def test_a_reply_field_missing_or_unknown_is_an_error_in_redis(redis: Redis) -> None:
    probe = Script("probe", args=(), reply=("a", "b"))
    prelude = resources.files("sidecar.queue.lua").joinpath("prelude.lua").read_text()
    keys_ = QueueRef("t", "probe").keys.all()

    async def run(body: str) -> object:
        return await redis.eval(probe.header() + prelude + body, len(keys_), *keys_)

    assert await run("return reply{b = 2, a = 1}") == [1, 2]  # by name, whatever the order
    with pytest.raises(ResponseError, match="reply field missing: b"):
        await run("return reply{a = 1}")
    with pytest.raises(ResponseError, match="unknown reply field"):
        await run("return reply{a = 1, b = 2, c = 3}")


async def test_every_script_loads_with_its_generated_header(redis: Redis) -> None:
    engine = Engine(redis)
    await engine.load_scripts()
    for script in SCRIPTS.values():
        assert await redis.script_exists(engine._sha[script.name]) == [True]
        assert source(script).startswith(script.header())
