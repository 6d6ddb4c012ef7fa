"""boto3 clients pointed at sidekey, as an application would use them.

Run by tests/aws.rs as `python clients.py CASE`, with AWS_TEST_ENDPOINT set to
the endpoint URL (`http://127.0.0.1:PORT/<route>` through sidekey, or the mock
itself when the test checks the mock). The credentials are dummies unless
AWS_TEST_ACCESS_KEY_ID, AWS_TEST_SECRET_ACCESS_KEY and AWS_TEST_SESSION_TOKEN
say otherwise (the mock's self-check signs with the real ones). No retries:
the Rust side counts what reached the provider. Each case checks what boto3
parsed and prints one JSON line.

The `credentials` case resolves botocore's own credential chain from the
environment and prints what it found (the mocks' self-check).
"""

import json
import os
import sys
import time

import boto3
from botocore.config import Config

ENDPOINT = os.environ.get("AWS_TEST_ENDPOINT", "").rstrip("/")
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
ENDPOINT_NAME = "my-endpoint"


def client(service):
    return boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url=ENDPOINT,
        aws_access_key_id=os.environ.get("AWS_TEST_ACCESS_KEY_ID", "dummy"),
        aws_secret_access_key=os.environ.get("AWS_TEST_SECRET_ACCESS_KEY", "dummy"),
        aws_session_token=os.environ.get("AWS_TEST_SESSION_TOKEN") or None,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )


def report(**fields):
    print(json.dumps(fields), flush=True)


MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]


def bedrock_converse():
    r = client("bedrock-runtime").converse(modelId=MODEL, messages=MESSAGES)
    text = "".join(c.get("text", "") for c in r["output"]["message"]["content"])
    report(call="bedrock-converse", text=text, stop=r["stopReason"], status=r["ResponseMetadata"]["HTTPStatusCode"])


def bedrock_converse_stream():
    r = client("bedrock-runtime").converse_stream(modelId=MODEL, messages=MESSAGES)
    # Arrival times relative to the first event, in this process's monotonic
    # clock: a proxy that buffered the stream delivers every event at once.
    first = None
    events = []
    text = ""
    for event in r["stream"]:
        now = time.monotonic()
        if first is None:
            first = now
        [(name, payload)] = event.items()
        events.append({"event": name, "at": now - first})
        if name == "contentBlockDelta":
            text += payload["delta"].get("text", "")
    report(call="bedrock-converse-stream", text=text, events=events)


def bedrock_invoke():
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    r = client("bedrock-runtime").invoke_model(modelId=MODEL, body=body, contentType="application/json", accept="application/json")
    report(call="bedrock-invoke", body=json.loads(r["body"].read()))


def bedrock_invoke_stream():
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    r = client("bedrock-runtime").invoke_model_with_response_stream(modelId=MODEL, body=body, contentType="application/json")
    chunks = [json.loads(e["chunk"]["bytes"]) for e in r["body"] if "chunk" in e]
    report(call="bedrock-invoke-stream", chunks=chunks)


def sagemaker_invoke():
    payload = {"inputs": "hi", "parameters": {"max_new_tokens": 4}}
    r = client("sagemaker-runtime").invoke_endpoint(
        EndpointName=ENDPOINT_NAME, Body=json.dumps(payload), ContentType="application/json", Accept="application/json"
    )
    echoed = json.loads(r["Body"].read())
    if echoed != payload:
        sys.exit(f"sagemaker-invoke: the endpoint echoed {echoed!r}, sent {payload!r}")
    report(call="sagemaker-invoke", body=echoed, status=r["ResponseMetadata"]["HTTPStatusCode"])


def credentials():
    # botocore's own credential chain, from the environment the test sets:
    # proves the STS, container and IMDS mocks speak the protocols as the
    # SDKs understand them.
    c = boto3.Session(region_name="us-east-1").get_credentials()
    f = c.get_frozen_credentials()
    report(call="credentials", method=c.method, access_key_id=f.access_key,
           secret_access_key=f.secret_key, session_token=f.token)


CASES = {
    "credentials": credentials,
    "bedrock-converse": bedrock_converse,
    "bedrock-converse-stream": bedrock_converse_stream,
    "bedrock-invoke": bedrock_invoke,
    "bedrock-invoke-stream": bedrock_invoke_stream,
    "sagemaker-invoke": sagemaker_invoke,
}

if __name__ == "__main__":
    CASES[sys.argv[1]]()
