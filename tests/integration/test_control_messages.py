"""Hostile bytes on the actor control sockets (supervisor ROUTER ↔ actor DEALER) are dropped
and counted, never the end of `up` or of an actor. Real sockets, no processes."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from aaflow_stream.channels import sockets
from aaflow_stream.plan import plan_actors
from aaflow_stream.protocol import Ready, Start, encode
from aaflow_stream.runtime.launches import ActorProcess, Launch
from aaflow_stream.runtime.supervisor import Supervisor
from aaflow_stream.runtime.supervisor_link import SupervisorLink

from .graphs import graph, source

# A Failed message whose reason is not UTF-8, and one nested where a string belongs.
BAD_UTF8 = b"\x93\xa6failed\xa6load.0\xa2\xff\xfe"
TOO_DEEP = b"\x93\xa6failed\xa6load.0" + b"\x91" * 100_000 + b"\xa1x"
# Down: a message whose tag is not UTF-8, and deep nesting.
BAD_TAG = b"\x91\xa2\xff\xfe"


class _Running:
    """Stands for a launched process that keeps running (no process is started here)."""

    pid = 0

    def poll(self) -> int | None:
        return None


def test_undecodable_messages_to_the_supervisor_are_dropped_and_counted(run_dir: Path) -> None:
    g = graph(source(batches=1))
    endpoint = f"ipc://{run_dir}/sup"

    async def main() -> Supervisor:
        sup = Supervisor(g, run_dir)
        ctx = zmq.asyncio.Context()
        sup._ctx, sup._router = ctx, sockets.control_socket(ctx, zmq.ROUTER, bind=endpoint)
        [spec] = plan_actors(g, run_dir, run_dir, supervisor_endpoint=endpoint)
        running: Any = _Running()
        actor = ActorProcess(spec, Launch(running, run_dir / "load.log", io.BytesIO()))
        sup._actors[spec.name] = actor
        dealer = sockets.control_socket(ctx, zmq.DEALER, identity=spec.name, connect=endpoint)
        try:
            for message in (BAD_UTF8, TOO_DEEP, encode(Ready(actor=spec.name, pid=1))):
                await dealer.send(message)
            async with asyncio.timeout(10):
                while not actor.ready:
                    await sup._pump(0.05)
        finally:
            sockets.close(dealer, 0)
            sockets.close(sup._router, 0)
            ctx.term()
        assert actor.failure is None and actor.pid == 1
        return sup

    sup = asyncio.run(main())
    assert dict(sup.malformed) == {"invalid_utf8": 1, "invalid": 1}


def test_undecodable_messages_to_an_actor_are_dropped_and_it_still_obeys_start(
    run_dir: Path,
) -> None:
    endpoint = f"ipc://{run_dir}/sup"

    async def main() -> SupervisorLink:
        ctx = zmq.asyncio.Context()
        router = sockets.control_socket(ctx, zmq.ROUTER, bind=endpoint)
        link = SupervisorLink(ctx, endpoint, "load.0")
        started = asyncio.Event()
        try:
            async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
                serving = tg.create_task(link.serve(started.set))
                await link.send(Ready(actor="load.0", pid=1))  # makes it known to the router
                peer, _ready = await router.recv_multipart()
                for message in (BAD_TAG, b"\x91" * 100_000, encode(Start())):
                    await router.send_multipart([peer, message])
                await started.wait()
                serving.cancel()
        finally:
            link.close(0)
            sockets.close(router, 0)
            ctx.term()
        return link

    link = asyncio.run(main())
    assert dict(link.malformed) == {"invalid_utf8": 1, "invalid": 1}
