"""A three-primary Redis Cluster: queues spread over shards, each queue's keys in
one slot, and the same guarantees as on one server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from redis.asyncio import RedisCluster

from devstack.stack import Stack
from sidecar.config import QueueSettings
from sidecar.queue.engine import Claim, Engine, QueueRef
from tests.conftest import eventually, make_stack
from tests.visitors import Visitor

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("cluster"), redis_cluster=True)
    yield s
    s.stop()


@pytest.fixture
async def cluster(cluster_stack: Stack) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_stack.redis_url)
    await client.initialize()  # learn the slot map before asking where keys live
    yield client
    await client.aclose()


async def test_queues_spread_over_shards_with_the_same_guarantees(cluster: RedisCluster) -> None:
    replicas = [Engine(cluster, purge_slack_ms=0), Engine(cluster, purge_slack_ms=0)]
    s = QueueSettings(capacity=2)
    queues = [QueueRef("acme", f"shard{i}") for i in range(12)]
    nodes = {getattr(cluster.get_node_from_key(q.keys.tickets), "name", None) for q in queues}
    assert len(nodes) >= 2  # the test really spans shards
    for q in queues:
        assert len({cluster.keyslot(k) for k in q.keys.all()}) == 1  # one slot per queue

    for q in queues:
        joined = await asyncio.gather(*(replicas[i % 2].join(q, f"s{i}", s) for i in range(5)))
        assert sorted(t for _, t, _ in joined) == [1, 2, 3, 4, 5]
        assert sorted(t for admitted, t, _ in joined if admitted) == [1, 2]
        await replicas[0].heartbeat({q: ([], [3, 4, 5], s)})  # the waiters poll
        first = next(f"s{i}" for i, (_, t, _) in enumerate(joined) if t == 1)
        assert await replicas[0].leave(q, 1, first, 0)
    # one batch touching every shard, from two replicas at once
    states = await asyncio.gather(*(e.tick([(q, s, "0-0") for q in queues]) for e in replicas))
    for a, b in zip(*states, strict=True):
        assert a.tickets == b.tickets == 5
        assert b.active + b.invited == 2 and b.serving == 3  # ticket 3 invited once
    await replicas[1].heartbeat({q: ([], [4, 5], s) for q in queues})


async def test_join_budget_and_opening_on_a_cluster(cluster: RedisCluster) -> None:
    """The per-address counters are built inside join.lua from the queue's prefix:
    same hash tag, same slot, so Cluster accepts them. The opening's order strings
    are declared keys of the queue, read back by the engine on every shard."""
    e = Engine(cluster, purge_slack_ms=0)
    for i in range(6):  # queues on different shards
        q = QueueRef("acme", f"budget{i}")
        s = QueueSettings(capacity=0, mode="queue-all", joins_per_address=2, opens_at=4_000_000_000)
        joined = await e.join_many(q, ["a", "b", "c", "d"], s, ["10.1.1.1"] * 3 + ["10.1.1.2"])
        assert [t for _, t, _ in joined] == [1, 2, 0, 3]
        keys = [k async for k in cluster.scan_iter(match=f"aq:{{acme:budget{i}}}:addr:*")]
        assert keys and {cluster.keyslot(k) for k in keys} == {cluster.keyslot(q.keys.tickets)}
        await e.heartbeat({q: ([], [1, 2, 3], s)})
        (st,) = await e.tick([(q, QueueSettings(capacity=0, opens_at=1), "0-0")])
        assert st.opened and st.order is not None
        assert sorted(st.line(t) for t in (1, 2, 3)) == [1, 2, 3]


async def test_scripts_come_back_after_a_flush(cluster: RedisCluster) -> None:
    e = Engine(cluster, purge_slack_ms=0)
    q = QueueRef("acme", "flushed")
    s = QueueSettings(capacity=1)
    await e.join(q, "a", s)
    await cluster.script_flush()  # every primary forgets the scripts (as after a failover)
    assert (await e.join(q, "b", s))[:2] == (False, 2)
    await e.heartbeat({q: ([], [2], s)})  # b polls
    (st,) = await e.tick([(q, s, "0-0")])
    assert st.tickets == 2
    await cluster.script_flush()
    await e.leave(q, 1, "a", 0)
    (st,) = await e.tick([(q, s, "0-0")])
    assert st.invited == 1
    assert await e.claim(q, 2, "b", s) is Claim.ADMITTED


async def test_the_site_works_on_a_cluster(
    cluster_stack: Stack, http: aiohttp.ClientSession
) -> None:
    path = "/q/on-cluster/"
    admitted = [Visitor(http, cluster_stack.url) for _ in range(2)]
    for v in admitted:
        assert (await v.get(path)).status == 200
    w = Visitor(http, cluster_stack.url)
    assert (await w.get(path)).status == 302
    assert (await w.status())["position"] == 1
    await admitted[0].post("/_anteroom/leave")

    async def in_() -> bool:
        return bool((await w.status())["state"] == "admitted")

    await eventually(in_, within=3)
    assert (await w.get(path)).status == 200


async def test_admin_on_a_cluster_finds_changes_and_audits_queues(
    cluster_stack: Stack, http: aiohttp.ClientSession
) -> None:
    from tests.conftest import ADMIN_TOKEN

    names = [f"admin{i}" for i in range(6)]  # spread over the shards
    for name in names:
        await Visitor(http, cluster_stack.url).get(f"/q/{name}/")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    base = cluster_stack.admin_url
    async with http.patch(
        f"{base}/api/queues/acme/admin0", json={"mode": "paused"}, headers=headers
    ) as r:
        assert r.status == 200 and (await r.json())["mode"] == "paused"
    async with http.post(f"{base}/api/queues/acme/admin1/drain", headers=headers) as r:
        assert r.status == 200 and (await r.json())["draining"]
    async with http.get(f"{base}/api/queues", headers=headers) as r:
        queues = {q["queue"]: q for q in (await r.json())["queues"]}
    assert set(names) <= set(queues)  # found by SCAN on every primary
    assert queues["admin0"]["mode"] == "paused" and queues["admin2"]["tickets"] == 1
    async with http.get(f"{base}/api/audit", headers=headers) as r:
        assert [e["action"] for e in (await r.json())["entries"]][:2] == ["drain", "set"]
    async with http.get(f"{base}/metrics", headers=headers) as r:
        assert r.status == 200 and 'anteroom_queue_tickets{queue="admin5",tenant="acme"} 1.0' in (
            await r.text()
        )
