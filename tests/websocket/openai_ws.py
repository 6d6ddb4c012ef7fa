"""The official openai SDK's WebSocket clients through sidekey (tests/websocket.rs).

Usage: openai_ws.py BASE_URL (sidekey's http:// URL for the openai route,
ending in /v1). The SDK gets a dummy key and derives ws:// from the base URL.
Each mode sends one event and prints what the mock provider echoed, as JSON
lines: {"mode": ..., "echo": ...}.
"""

import asyncio
import json
import sys

from openai import AsyncOpenAI


async def main(base_url: str) -> None:
    client = AsyncOpenAI(api_key="sk-dummy-key-for-sidekey", base_url=base_url)

    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.send({"type": "session.update", "session": {"type": "realtime"}})
        echo = json.loads(await asyncio.wait_for(conn.recv_bytes(), 10))
        print(json.dumps({"mode": "realtime", "echo": echo}), flush=True)

    async with client.responses.connect() as conn:
        await conn.send({"type": "response.create", "model": "gpt-5", "input": "hi"})
        echo = json.loads(await asyncio.wait_for(conn.recv_bytes(), 10))
        print(json.dumps({"mode": "responses", "echo": echo}), flush=True)


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1]), 60))
