#!/usr/bin/env python3
"""Regenerate tests/vectors/sharedkey.json with the official Azure Storage Python SDK.

Run by hand (CI never runs it):

    python3 -m venv /tmp/azsdk && /tmp/azsdk/bin/pip install azure-storage-blob==12.31.1
    /tmp/azsdk/bin/python scripts/gen_sharedkey_vectors.py > tests/vectors/sharedkey.json

Each vector is a request (method, URL, headers) signed by the SDK's own
`SharedKeyCredentialPolicy.on_request`; we record the string-to-sign it built and the
`Authorization` header it produced. Our signer must reproduce both byte for byte.

The SDK sorts query names before lower-casing them, where the docs (and Azurite) lower-case
first; the mixed-case vector uses names whose order is the same either way.

One rule the SDK does not implement is the comma-joining of a repeated query
parameter (azure-core keeps only the last value). For that case the expected
canonicalized resource is copied from Microsoft's "Authorize with Shared Key" page
(the List Blobs example), and only the HMAC is computed by the SDK's `sign_string`.
"""
import json
import sys

import azure.storage.blob
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest
from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy
from azure.storage.blob._shared import sign_string

DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ACCOUNT = "myaccount"
# 64 bytes of 0x00..0x3f, base64: a made-up key for host-style vectors.
KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw=="
DATE = "Mon, 23 Nov 2026 01:30:00 GMT"
VERSION = "2025-11-05"
LEASE = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def sign(name, account, key, method, url, headers):
    captured = {}
    policy = SharedKeyCredentialPolicy(account, key)
    original = policy._add_authorization_header

    def capture(request, string_to_sign):
        captured["string_to_sign"] = string_to_sign
        original(request, string_to_sign)

    policy._add_authorization_header = capture
    request = HttpRequest(method, url, headers=dict(headers))
    policy.on_request(PipelineRequest(request, PipelineContext(None)))
    return {
        "name": name,
        "account": account,
        "key": key,
        "method": method,
        "url": url,
        "headers": headers,
        "string_to_sign": captured["string_to_sign"],
        "authorization": request.headers["Authorization"],
    }


def base(extra):
    return [["x-ms-date", DATE], ["x-ms-version", VERSION]] + extra


vectors = [
    sign("host-style acquire", ACCOUNT, KEY, "PUT",
         "https://myaccount.blob.core.windows.net/locks/job-1?comp=lease",
         base([["x-ms-lease-action", "acquire"], ["x-ms-lease-duration", "15"],
               ["x-ms-proposed-lease-id", LEASE], ["Content-Length", "0"]])),
    sign("path-style azurite acquire", DEV_ACCOUNT, DEV_KEY, "PUT",
         "http://127.0.0.1:10000/devstoreaccount1/locks/job-1?comp=lease",
         base([["x-ms-lease-action", "acquire"], ["x-ms-lease-duration", "-1"],
               ["x-ms-proposed-lease-id", LEASE], ["Content-Length", "0"]])),
    sign("path-style custom domain container lease, mixed-case query", ACCOUNT, KEY, "PUT",
         "https://azs.example.local/myaccount/locks?restype=container&Comp=lease&timeout=30",
         base([["x-ms-lease-action", "break"], ["x-ms-lease-break-period", "0"],
               ["Content-Length", "0"]])),
    sign("non-zero content length with content type", ACCOUNT, KEY, "PUT",
         "https://myaccount.blob.core.windows.net/locks/data.txt",
         base([["x-ms-blob-type", "BlockBlob"], ["Content-Length", "11"],
               ["Content-Type", "text/plain; charset=utf-8"], ["If-None-Match", "*"]])),
    sign("set metadata with x-ms-meta and If-Match", DEV_ACCOUNT, DEV_KEY, "PUT",
         "http://127.0.0.1:10000/devstoreaccount1/locks/job-1?comp=metadata",
         base([["x-ms-lease-id", LEASE], ["x-ms-meta-azmutexowner", "host%3Dbuild-7"],
               ["x-ms-meta-azmutexfence", "42"], ["If-Match", "\"0x8DC1234567890AB\""],
               ["Content-Length", "0"], ["x-ms-client-request-id", "b0c7e2a4-5d1f-4e59-9c2e-1a2b3c4d5e6f"]])),
    sign("head with percent-encoded path", ACCOUNT, KEY, "HEAD",
         "https://myaccount.blob.core.windows.net/locks/nightly%20job/%C3%A9t%C3%A9",
         base([])),
    sign("page blob sequence number increment", DEV_ACCOUNT, DEV_KEY, "PUT",
         "http://localhost:10000/devstoreaccount1/locks/job-1?comp=properties",
         base([["x-ms-lease-id", LEASE], ["x-ms-sequence-number-action", "increment"],
               ["Content-Length", "0"]])),
    sign("delete container, sovereign cloud suffix", ACCOUNT, KEY, "DELETE",
         "https://myaccount.blob.core.chinacloudapi.cn/locks?restype=container",
         base([["x-ms-lease-id", LEASE]])),
]

# Repeated query parameter: the canonicalized resource is Microsoft's documented example.
docs_resource = "/myaccount/mycontainer\ncomp:list\ninclude:metadata,snapshots,uncommittedblobs\nrestype:container"
docs_sts = "GET\n" + "\n" * 11 + f"x-ms-date:{DATE}\nx-ms-version:{VERSION}\n" + docs_resource
vectors.append({
    "name": "repeated query parameter (canonicalized resource from Microsoft's docs)",
    "account": ACCOUNT,
    "key": KEY,
    "method": "GET",
    "url": "https://myaccount.blob.core.windows.net/mycontainer?restype=container&comp=list&include=snapshots&include=metadata&include=uncommittedblobs",
    "headers": base([]),
    "string_to_sign": docs_sts,
    "authorization": f"SharedKey {ACCOUNT}:{sign_string(KEY, docs_sts)}",
})

json.dump({"generator": f"azure-storage-blob {azure.storage.blob.__version__}", "vectors": vectors},
          sys.stdout, indent=2)
sys.stdout.write("\n")
