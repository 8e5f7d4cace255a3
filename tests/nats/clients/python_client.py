"""A plain NATS client in another language (Python, nats-py) talking to agents on a node.

Run by tests/nats/other_languages.rs as
    python3 python_client.py NATS_URL COUNTER_AGENT_REF_SUBJECT
It prints one JSON object with what it saw; the test asserts on it.
"""

import asyncio
import json
import sys

import nats


async def main(url: str, counter_ref: str) -> None:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    seen = {}

    # A request on an agent's legacy inbox; the reply names its sender in a header.
    reply = await nc.request("agent.to.echo.py", b"from python", timeout=10)
    seen["echo"] = reply.data.decode()
    seen["echo_sender"] = (reply.headers or {}).get("Agent-Ref")

    # A publish to the inbox, then a request on the same subject: handled in order.
    await nc.publish("agent.to.counter.cmd", b"add 3")
    reply = await nc.request("agent.to.counter.cmd", b"add 4", timeout=10)
    seen["after_publish_and_request"] = reply.data.decode()

    # A request on the agent-ref subject.
    reply = await nc.request(counter_ref, b"get", timeout=10)
    seen["by_agent_ref"] = reply.data.decode()
    seen["counter_sender"] = (reply.headers or {}).get("Agent-Ref")

    # Dual publishing during a subject migration: the same message (one Nats-Msg-Id) on
    # the legacy inbox and on the agent-ref subject is handled once.
    once = {"Nats-Msg-Id": "python-dual-1"}
    await nc.publish("agent.to.counter.cmd", b"add 10", headers=once)
    await nc.publish(counter_ref, b"add 10", headers=once)
    value = None
    for _ in range(100):
        value = (await nc.request("agent.to.counter.cmd", b"get", timeout=10)).data.decode()
        if value != "7":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    seen["after_dual_publish"] = (
        await nc.request("agent.to.counter.cmd", b"get", timeout=10)
    ).data.decode()

    await nc.close()
    print(json.dumps(seen))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
