"""An `AzureOpenAI` realtime handshake through sidekey's TLS listener
(tests/wss.rs).

Usage: azure_realtime.py AZURE_ENDPOINT WEBSOCKET_BASE_URL (sidekey's
https:// URL for the azure route, and the wss:// one for its realtime
socket). The SDK gets a dummy key; the test CA is trusted through
SSL_CERT_FILE. Prints one JSON line: the event the mock echoed.
"""

import asyncio
import json
import sys

from openai import AsyncAzureOpenAI


async def main(endpoint: str, websocket_base_url: str) -> None:
    client = AsyncAzureOpenAI(
        azure_endpoint=endpoint,
        api_key="sidekey-dummy-key",
        api_version="2025-04-01-preview",
        websocket_base_url=websocket_base_url,
    )
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.send({"type": "session.update", "session": {"type": "realtime"}})
        echo = json.loads(await asyncio.wait_for(conn.recv_bytes(), 10))
        print(json.dumps({"echo": echo}), flush=True)


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2]), 60))
