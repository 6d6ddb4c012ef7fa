"""google-genai Live (`client.aio.live.connect`) through sidekey's TLS
listener (tests/wss.rs).

Usage: gemini_live.py BASE_URL (sidekey's https:// URL for the gemini route).
The SDK gets a dummy key and derives wss:// from the base URL; the test CA
is trusted through SSL_CERT_FILE. Prints one JSON line: the text of the
model turn the mock answered.
"""

import asyncio
import json
import sys

from google import genai
from google.genai import types


async def main(base_url: str) -> None:
    client = genai.Client(
        api_key="sidekey-dummy-key",
        http_options=types.HttpOptions(base_url=base_url),
    )
    config = types.LiveConnectConfig(response_modalities=["TEXT"])
    async with client.aio.live.connect(model="gemini-live-2.5-flash", config=config) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text="hello")]),
            turn_complete=True,
        )
        text = ""
        async for message in session.receive():
            if message.text:
                text += message.text
            if message.server_content and message.server_content.turn_complete:
                break
        print(json.dumps({"text": text}), flush=True)


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1]), 60))
