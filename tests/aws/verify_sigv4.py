"""An independent SigV4 oracle: botocore recomputes the signature of requests
exactly as a mock provider received them.

Used by tests/common/aws.rs. Reads JSON on stdin:

    {"credentials": {"access_key_id": "...", "secret_access_key": "...",
                     "session_token": "..." | null},
     "region": "us-east-1", "service": "bedrock",
     "requests": [{"method": "POST", "url": "http://host/path?query",
                   "headers": [[name, value], ...], "body_b64": "..."}]}

and prints a JSON list with one {"ok": bool, "why": str} per request.

For each request, the headers the signer named in SignedHeaders are taken as
they arrived (a proxy's transport may add unsigned ones, as AWS allows), the
signing time is the received X-Amz-Date, and botocore's own SigV4Auth
computes the canonical request, the string to sign, the signature and the
Authorization header, which must equal the received one byte for byte. The
received x-amz-security-token must be the session token (and absent without
one), SignedHeaders must cover host and x-amz-date (and the token when there
is one), and a received x-amz-content-sha256 must be the body's hash.

`python verify_sigv4.py --self-test` signs requests with botocore itself
(with a query string, with a session token, with unsigned headers added
after signing) and with a minimal signer written from the specification
that signs only some headers, feeds them through the oracle and checks
that all verify with the right secret and none with a wrong secret,
service, region or token, a tampered body, query, path or signed header.
"""

import base64
import hashlib
import json
import re
import sys
from urllib.parse import urlsplit

from botocore.auth import SIGNED_HEADERS_BLACKLIST, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<akid>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[^,]+), Signature=(?P<sig>[0-9a-f]{64})$"
)
AMZ_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")


def header_values(headers, name):
    return [v for (k, v) in headers if k.lower() == name]


def verify_one(creds, region, service, req):
    headers = req["headers"]
    body = base64.b64decode(req.get("body_b64") or "")
    auths = header_values(headers, "authorization")
    if len(auths) != 1:
        return False, f"{len(auths)} Authorization headers"
    m = AUTH_RE.match(auths[0])
    if not m:
        return False, f"Authorization is not a SigV4 header: {auths[0]!r}"
    if m["akid"] != creds["access_key_id"]:
        return False, f"signed by access key {m['akid']!r}, expected {creds['access_key_id']!r}"
    if m["region"] != region or m["service"] != service:
        return False, f"scope {m['region']}/{m['service']}, expected {region}/{service}"
    dates = header_values(headers, "x-amz-date")
    if len(dates) != 1 or not AMZ_DATE_RE.match(dates[0]):
        return False, f"x-amz-date headers: {dates!r}"
    amz_date = dates[0]
    if m["date"] != amz_date[:8]:
        return False, f"scope date {m['date']} is not the x-amz-date's {amz_date}"

    signed = m["signed"].split(";")
    if signed != sorted(set(signed)):
        return False, f"SignedHeaders not sorted and unique: {m['signed']}"
    for needed in ("host", "x-amz-date"):
        if needed not in signed:
            return False, f"{needed} is not signed: {m['signed']}"
    unsignable = [h for h in signed if h in SIGNED_HEADERS_BLACKLIST]
    if unsignable:
        return False, f"signed headers botocore never signs: {unsignable}"

    token = creds.get("session_token")
    tokens = header_values(headers, "x-amz-security-token")
    if token is None and tokens:
        return False, "x-amz-security-token sent without a session token"
    if token is not None:
        if tokens != [token]:
            return False, f"x-amz-security-token {tokens!r} is not the session token"
        if "x-amz-security-token" not in signed:
            return False, "x-amz-security-token is not signed"

    hashes = header_values(headers, "x-amz-content-sha256")
    if hashes and hashes != [hashlib.sha256(body).hexdigest()]:
        return False, f"x-amz-content-sha256 {hashes!r} is not the hash of the body"

    # The request as the signer must have built it: the signed headers, as
    # received, in the order received (repeated headers keep their order).
    aws_req = AWSRequest(method=req["method"], url=req["url"], data=body)
    for name in signed:
        values = header_values(headers, name)
        if not values:
            return False, f"signed header {name} did not arrive"
        for v in values:
            aws_req.headers[name] = v
    aws_req.context["timestamp"] = amz_date

    signer = SigV4Auth(
        Credentials(creds["access_key_id"], creds["secret_access_key"], token), service, region
    )
    canonical = signer.canonical_request(aws_req)
    string_to_sign = signer.string_to_sign(aws_req, canonical)
    signature = signer.signature(string_to_sign, aws_req)
    signer._inject_signature_to_request(aws_req, signature)
    expected = aws_req.headers["Authorization"]
    if expected != auths[0]:
        return False, (
            f"signature mismatch: received {auths[0]!r}, botocore computes {expected!r}; "
            f"canonical request:\n{canonical}"
        )
    return True, "ok"


def verify(doc):
    out = []
    for req in doc["requests"]:
        try:
            ok, why = verify_one(doc["credentials"], doc["region"], doc["service"], req)
        except Exception as e:  # a malformed request is a failed verification
            ok, why = False, f"{type(e).__name__}: {e}"
        out.append({"ok": ok, "why": why})
    return out


def signed_by_botocore(creds, region, service, method, url, body, extra_after=()):
    """A request signed by botocore, as it would arrive on the wire."""
    req = AWSRequest(
        method=method,
        url=url,
        data=body,
        headers={"Content-Type": "application/json", "X-Amz-Target": "x"},
    )
    SigV4Auth(
        Credentials(creds["access_key_id"], creds["secret_access_key"], creds["session_token"]),
        service,
        region,
    ).add_auth(req)
    headers = [["host", urlsplit(url).netloc]] + [[k, v] for k, v in req.headers.items()]
    # What a transport adds after signing: unsigned, and must not matter.
    headers += [["content-length", str(len(body))], *extra_after]
    return {
        "method": method,
        "url": url,
        "headers": headers,
        "body_b64": base64.b64encode(body).decode(),
    }


def signed_from_the_spec(creds, region, service, method, url, body, amz_date):
    """A request signed by a minimal SigV4 written from AWS's specification
    (not botocore), signing only host, x-amz-date, content-type and the
    token, as a signer that picks its headers does."""
    import hmac
    from urllib.parse import quote

    parts = urlsplit(url)
    headers = [["host", parts.netloc], ["x-amz-date", amz_date], ["content-type", "application/json"]]
    if creds["session_token"]:
        headers.append(["x-amz-security-token", creds["session_token"]])
    signed = sorted(h[0] for h in headers)
    canonical_headers = "".join(f"{n}:{dict(headers)[n].strip()}\n" for n in signed)
    query = "&".join(sorted(parts.query.split("&"))) if parts.query else ""
    canonical = "\n".join([
        method, quote(parts.path, safe="/~"), query, canonical_headers, ";".join(signed),
        hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + creds["secret_access_key"]).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    auth = f"AWS4-HMAC-SHA256 Credential={creds['access_key_id']}/{scope}, SignedHeaders={';'.join(signed)}, Signature={sig}"
    headers += [["authorization", auth], ["user-agent", "Boto3/1 dummy"], ["content-length", str(len(body))]]
    return {"method": method, "url": url, "headers": headers, "body_b64": base64.b64encode(body).decode()}


def self_test():
    plain = {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG", "session_token": None}
    temp = {"access_key_id": "ASIAEXAMPLE", "secret_access_key": "temp/secret+key", "session_token": "FwoGZXIvYXdz//token=="}
    base = "http://127.0.0.1:9/model/anthropic.claude-3-haiku-20240307-v1%3A0"
    cases = [
        (plain, "POST", f"{base}/converse", b'{"messages":[]}'),
        (plain, "POST", f"{base}/converse?z=last&a=first&m=x%20y", "h\u00e9llo \u2603".encode()),
        (temp, "POST", f"{base}/converse-stream", b'{"messages":[]}'),
        (temp, "GET", "http://127.0.0.1:9/foundation-models?byProvider=anthropic", b""),
    ]
    problems = []
    for creds, method, url, body in cases:
        req = signed_by_botocore(creds, "us-east-1", "bedrock", method, url, body,
                                 [["user-agent", "transport/1"], ["accept-encoding", "identity"]])
        doc = {"credentials": creds, "region": "us-east-1", "service": "bedrock", "requests": [req]}
        [good] = verify(doc)
        if not good["ok"]:
            problems.append(f"{url}: right secret rejected: {good['why']}")
        wrong = dict(creds, secret_access_key=creds["secret_access_key"] + "x")
        bad_docs = {
            "wrong secret": dict(doc, credentials=wrong),
            "wrong service": dict(doc, service="sagemaker"),
            "wrong region": dict(doc, region="us-west-2"),
            "tampered body": dict(doc, requests=[dict(req, body_b64=base64.b64encode(body + b" ").decode())]),
            "tampered query": dict(doc, requests=[dict(req, url=url + ("&" if "?" in url else "?") + "extra=1")]),
            # The model id's %3A as ':' is a different canonical URI.
            "tampered path": dict(doc, requests=[dict(req, url=url.replace("%3A", ":") if "%3A" in url
                                                         else url.replace("/foundation", "/x/foundation"))]),
            "signed header changed": dict(doc, requests=[dict(req, headers=[
                [k, "text/plain" if k.lower() == "content-type" else v] for k, v in req["headers"]])]),
        }
        if creds["session_token"]:
            bad_docs["wrong token"] = dict(doc, credentials=dict(creds, session_token="other"))
        else:
            bad_docs["unexpected token"] = dict(doc, requests=[dict(req, headers=req["headers"] + [["x-amz-security-token", "t"]])])
        for what, bad in bad_docs.items():
            [verdict] = verify(bad)
            if verdict["ok"]:
                problems.append(f"{url}: {what} accepted")
    # The same requests signed by a second implementation, from the spec.
    for creds, method, url, body in cases:
        req = signed_from_the_spec(creds, "eu-west-3", "sagemaker", method, url, body, "20261206T205959Z")
        doc = {"credentials": creds, "region": "eu-west-3", "service": "sagemaker", "requests": [req]}
        [good] = verify(doc)
        if not good["ok"]:
            problems.append(f"{url}: spec-signed request rejected: {good['why']}")
        wrong = dict(creds, secret_access_key="wrong")
        [bad] = verify(dict(doc, credentials=wrong))
        if bad["ok"]:
            problems.append(f"{url}: spec-signed request accepted with a wrong secret")
    if problems:
        sys.exit("self-test failed:\n" + "\n".join(problems))
    print(json.dumps({"self_test": "ok", "cases": len(cases)}))


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
    else:
        print(json.dumps(verify(json.load(sys.stdin))))
