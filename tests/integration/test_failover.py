"""A Redis Cluster with replicas (3 primaries + 3 replicas, cluster-node-timeout
1 s) loses the primary of a queue's shard under traffic: its replica takes over,
admitted visitors keep passing, joins on that shard recover within seconds, and
capacity and the order of the line hold."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field

import aiohttp
import pytest
from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from sidecar.queue.keys import queue_keys
from tests.conftest import make_stack
from tests.visitors import Visitor, fill_then_queue

pytestmark = pytest.mark.integration

QUEUE = "failover"
PATH = f"/q/{QUEUE}/"
CAPACITY = 3


@dataclass
class Watch:
    samples: list[int] = field(default_factory=list)
    errors: int = 0


async def sample(cluster: RedisCluster, watch: Watch) -> None:
    keys = queue_keys("acme", QUEUE)
    while True:
        try:
            active = await cluster.zcard(keys.active)
            invited = await cluster.zcard(keys.invited)
            watch.samples.append(int(active) + int(invited))
        except (RedisError, OSError):
            watch.errors += 1  # the shard is failing over
        await asyncio.sleep(0.05)


async def test_primary_killed_under_traffic(tmp_path, http: aiohttp.ClientSession) -> None:
    stack = make_stack(
        tmp_path / "stack",
        redis_cluster=True,
        cluster_replicas=1,
        ANTEROOM_CAPACITY=str(CAPACITY),
        ANTEROOM_SESSION_TTL="30",
        ANTEROOM_GRACE="5",
    )
    cluster = RedisCluster.from_url(stack.redis_url)
    watch = Watch()
    sampler = None
    try:
        await cluster.initialize()
        keys = queue_keys("acme", QUEUE)
        primary = cluster.get_node_from_key(keys.tickets)
        assert primary is not None
        ports = [stack.redis_port, *stack.cluster_ports]
        port = int(primary.port)
        name = "redis" if port == ports[0] else f"redis{ports.index(port)}"
        sampler = asyncio.create_task(sample(cluster, watch))

        admitted, waiters = await fill_then_queue(http, stack.url, PATH, CAPACITY, 6)
        await asyncio.sleep(0.5)  # replication catches up (it is asynchronous)

        # SIGKILL: no goodbye to the cluster; the replica is promoted after the node timeout
        proc = stack.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()

        passing: list[int] = []

        async def keep_using(v: Visitor) -> None:
            while time.monotonic() - killed < 6:
                passing.append((await v.get(PATH)).status)
                await asyncio.sleep(0.2)
            await v.post(f"/_anteroom/leave?queue={QUEUE}")

        recovered: list[float] = []
        codes: list[int] = []

        async def newcomers() -> None:
            # one newcomer every 200 ms until one is given a place again
            while not recovered:
                v = Visitor(http, stack.url)
                r = await v.get(PATH)
                codes.append(r.status)
                if v.cookie:
                    recovered.append(time.monotonic() - killed)
                assert time.monotonic() - killed < 20, "joins did not recover"
                await asyncio.sleep(0.2)

        admissions: list[tuple[float, int]] = []

        async def wait_turn(v: Visitor) -> None:
            while True:
                body = await v.status()
                if body["state"] == "admitted":
                    break
                assert time.monotonic() - killed < 40, body
                await asyncio.sleep(0.2)
            assert v.cookie
            admissions.append((time.monotonic(), int(v.cookie.split("|")[4])))
            await asyncio.sleep(0.5)
            await v.post(f"/_anteroom/leave?queue={QUEUE}")

        await asyncio.gather(
            *(keep_using(v) for v in admitted), newcomers(), *(wait_turn(v) for v in waiters)
        )
    finally:
        if sampler is not None:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        await cluster.aclose()
        stack.stop()

    assert set(passing) == {200}, passing  # admitted visitors never noticed
    assert all(c < 500 for c in codes), codes  # newcomers waited, never an error
    assert recovered and recovered[0] < 10
    # the line kept its order: nobody went in more than a poll before someone ahead
    order = sorted(admissions)
    late = [
        (a, b)
        for i, a in enumerate(order)
        for b in order[i + 1 :]
        if b[1] < a[1] and b[0] - a[0] > 0.5
    ]
    assert len(admissions) == 6 and not late, order
    assert watch.samples and max(watch.samples) <= CAPACITY
    print(
        f"\nfailover: joins on the shard recovered {recovered[0]:.1f}s after SIGKILL; "
        f"{len(passing)} admitted requests all passed; {len(watch.samples)} samples, "
        f"most occupied {max(watch.samples)}/{CAPACITY}"
    )
