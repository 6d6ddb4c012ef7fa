"""Official SDK clients pointed at sidekey, as an application would use them.

Run by tests/sdk.rs, which starts sidekey and a mock provider and then calls
`python clients.py CASE` with SIDEKEY_URL set to sidekey's base URL. Each case
makes one normal and one streaming call with a dummy key and only the base
URL changed, checks what the SDK parsed, and prints one JSON line per call.
The Rust side checks what reached the provider.
"""

import json
import os
import sys

URL = os.environ["SIDEKEY_URL"].rstrip("/")
EXPECTED = "hello from mock"


def report(call, text, chunks):
    if text != EXPECTED:
        sys.exit(f"{call}: SDK returned {text!r}, expected {EXPECTED!r}")
    print(json.dumps({"call": call, "text": text, "chunks": chunks}), flush=True)


def openai_case():
    # design.md: OPENAI_BASE_URL=http://127.0.0.1:8787/openai/v1, any dummy key.
    os.environ["OPENAI_BASE_URL"] = f"{URL}/openai/v1"
    os.environ["OPENAI_API_KEY"] = "sidekey"
    from openai import OpenAI

    client = OpenAI(max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    report("openai", r.choices[0].message.content, 1)
    parts = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
        if c.choices
    ]
    report("openai-stream", "".join(parts), len([p for p in parts if p]))


def azure_case():
    from openai import AzureOpenAI

    client = AzureOpenAI(
        azure_endpoint=f"{URL}/azure", api_key="sidekey", api_version="2024-10-21", max_retries=0
    )
    messages = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="gpt-4o", messages=messages)
    report("azure", r.choices[0].message.content, 1)
    parts = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
        if c.choices
    ]
    report("azure-stream", "".join(parts), len([p for p in parts if p]))


def anthropic_case():
    # design.md: ANTHROPIC_BASE_URL=http://127.0.0.1:8787/anthropic.
    os.environ["ANTHROPIC_BASE_URL"] = f"{URL}/anthropic"
    os.environ["ANTHROPIC_API_KEY"] = "sidekey"
    from anthropic import Anthropic

    client = Anthropic(max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    r = client.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=messages)
    report("anthropic", "".join(b.text for b in r.content if b.type == "text"), 1)
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=16, messages=messages) as s:
        parts = list(s.text_stream)
    report("anthropic-stream", "".join(parts), len(parts))


def gemini_case():
    # design.md: google-genai with base_url=http://127.0.0.1:8787/gemini.
    from google import genai
    from google.genai import types

    client = genai.Client(api_key="sidekey", http_options=types.HttpOptions(base_url=f"{URL}/gemini"))
    r = client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    report("gemini", r.text, 1)
    parts = [c.text or "" for c in client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi")]
    report("gemini-stream", "".join(parts), len([p for p in parts if p]))


def vertex_case():
    # google-genai in Vertex mode: base_url at sidekey, and a dummy OAuth
    # token (sidekey replaces it with one minted from its service account).
    import google.oauth2.credentials
    from google import genai
    from google.genai import types

    global EXPECTED
    EXPECTED = "hello from vertex"
    client = genai.Client(
        vertexai=True,
        project="proj",
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token="sidekey"),
        http_options=types.HttpOptions(base_url=f"{URL}/vertex"),
    )
    r = client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    report("vertex", r.text, 1)
    parts = [c.text or "" for c in client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi")]
    report("vertex-stream", "".join(parts), len([p for p in parts if p]))


CASES = {
    "openai": openai_case,
    "azure": azure_case,
    "anthropic": anthropic_case,
    "gemini": gemini_case,
    "vertex": vertex_case,
}

if __name__ == "__main__":
    CASES[sys.argv[1]]()
