"""Official clients for the keyless tests (tests/keyless.rs).

Two kinds of case, each printing one JSON line per call:

- Through sidekey, as an application would call it: `azure-sdk` (openai's
  AzureOpenAI with a dummy api_key, base URL SIDEKEY_URL/azure) and
  `vertex-sdk` (google-genai in Vertex mode with a dummy OAuth token, base URL
  SIDEKEY_URL/vertex). sidekey replaces the dummy credential with a token it
  mints from the pod's identity.
- The oracle, straight to the mocks without sidekey: `azure-identity KIND`
  (KIND: workload, secret, managed) gets a token with azure-identity from the
  Entra/IMDS mock and calls the mock Azure OpenAI with it through AzureOpenAI;
  `google-auth KIND` (KIND: external-account, authorized-user) gets one with
  google-auth from the federation / refresh-token mock and calls the mock
  Vertex with it through google-genai. This proves that the mocks accept
  exactly what the official libraries send and answer what they parse.

Each case makes one normal and one streaming call and checks the text.
"""

import json
import os
import sys

AZURE_TEXT = "hello from azure"
VERTEX_TEXT = "hello from vertex"
AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
API_VERSION = "2024-10-21"


def report(call, text, chunks, expected, **extra):
    if text != expected:
        sys.exit(f"{call}: the client returned {text!r}, expected {expected!r}")
    print(json.dumps(dict({"call": call, "text": text, "chunks": chunks}, **extra)), flush=True)


def azure_calls(client, deployment, name, **extra):
    messages = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model=deployment, messages=messages)
    report(name, r.choices[0].message.content, 1, AZURE_TEXT, fingerprint=r.system_fingerprint, **extra)
    parts = [
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model=deployment, messages=messages, stream=True)
        if c.choices
    ]
    report(name + "-stream", "".join(parts), len([p for p in parts if p]), AZURE_TEXT)


def vertex_calls(client, name):
    r = client.models.generate_content(model="gemini-2.0-flash", contents="hi")
    report(name, r.text, 1, VERTEX_TEXT)
    parts = [c.text or "" for c in client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi")]
    report(name + "-stream", "".join(parts), len([p for p in parts if p]), VERTEX_TEXT)


def azure_sdk():
    from openai import AzureOpenAI

    url = os.environ["SIDEKEY_URL"].rstrip("/")
    client = AzureOpenAI(
        azure_endpoint=f"{url}/azure", api_key="sidekey-dummy", api_version=API_VERSION, max_retries=0
    )
    azure_calls(client, os.environ.get("DEPLOYMENT", "gpt-4o"), "azure")


def vertex_sdk():
    import google.oauth2.credentials
    from google import genai
    from google.genai import types

    url = os.environ["SIDEKEY_URL"].rstrip("/")
    client = genai.Client(
        vertexai=True,
        project="proj",
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token="sidekey-dummy"),
        http_options=types.HttpOptions(base_url=f"{url}/vertex"),
    )
    vertex_calls(client, "vertex")


def azure_identity(kind):
    # Everything from the environment, as on AKS (AZURE_AUTHORITY_HOST,
    # AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE) or a VM
    # (AZURE_POD_IDENTITY_AUTHORITY_HOST moves IMDS).
    from azure.identity import (
        ClientSecretCredential,
        ManagedIdentityCredential,
        WorkloadIdentityCredential,
        get_bearer_token_provider,
    )
    from openai import AzureOpenAI

    if kind == "workload":
        credential = WorkloadIdentityCredential()
    elif kind == "secret":
        with open(os.environ["AZURE_CLIENT_SECRET_FILE"], encoding="utf-8") as f:
            secret = f.read().strip()
        # MSAL would ask login.microsoftonline.com for instance discovery.
        credential = ClientSecretCredential(
            os.environ["AZURE_TENANT_ID"], os.environ["AZURE_CLIENT_ID"], secret, disable_instance_discovery=True
        )
    elif kind == "managed":
        client_id = os.environ.get("AZURE_CLIENT_ID")
        credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    else:
        sys.exit(f"unknown kind {kind}")
    token = credential.get_token(AZURE_SCOPE)
    client = AzureOpenAI(
        azure_endpoint=os.environ["AZURE_OPENAI_URL"],
        azure_ad_token_provider=get_bearer_token_provider(credential, AZURE_SCOPE),
        api_version=API_VERSION,
        max_retries=0,
    )
    azure_calls(client, "gpt-4o", f"azure-identity-{kind}", expires_on=token.expires_on)


def google_auth(kind):
    import google.oauth2.credentials
    from google.auth import identity_pool
    from google import genai
    from google.genai import types

    path = os.environ["GOOGLE_CREDENTIALS_FILE"]
    if kind == "external-account":
        # What google.auth.load_credentials_from_file builds for this type,
        # without its project lookup at cloudresourcemanager.googleapis.com.
        credentials = identity_pool.Credentials.from_file(path, scopes=[GOOGLE_SCOPE])
    elif kind == "authorized-user":
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        # google-auth always uses https://oauth2.googleapis.com/token for an
        # authorized_user file, whatever its token_uri says: set it back.
        credentials = google.oauth2.credentials.Credentials.from_authorized_user_info(
            info, scopes=[GOOGLE_SCOPE]
        ).with_token_uri(info["token_uri"])
    else:
        sys.exit(f"unknown kind {kind}")
    client = genai.Client(
        vertexai=True,
        project="proj",
        location="us-central1",
        credentials=credentials,
        http_options=types.HttpOptions(base_url=os.environ["VERTEX_URL"]),
    )
    vertex_calls(client, f"google-auth-{kind}")


if __name__ == "__main__":
    case = sys.argv[1]
    if case == "azure-sdk":
        azure_sdk()
    elif case == "vertex-sdk":
        vertex_sdk()
    elif case == "azure-identity":
        azure_identity(sys.argv[2])
    elif case == "google-auth":
        google_auth(sys.argv[2])
    else:
        sys.exit(f"unknown case {case}")
