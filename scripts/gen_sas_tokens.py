#!/usr/bin/env python3
"""Regenerate tests/vectors/sas.json: SAS tokens for Azurite's public development account,
made by the official Azure Storage Python SDK (an independent implementation).

Run by hand (CI never runs it):

    python3 -m venv /tmp/azsdk && /tmp/azsdk/bin/pip install azure-storage-blob==12.31.1
    /tmp/azsdk/bin/python scripts/gen_sas_tokens.py > tests/vectors/sas.json

The development account key is public, so these tokens are not secrets. They expire in 2099
and leave out the start time, so clock skew cannot make them "not yet valid".
"""
import datetime
import json
import sys

import azure.storage.blob
from azure.storage.blob import (AccountSasPermissions, ResourceTypes, generate_account_sas)

DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
EXPIRY = datetime.datetime(2099, 1, 1, tzinfo=datetime.timezone.utc)

account_sas = generate_account_sas(
    DEV_ACCOUNT, DEV_KEY,
    resource_types=ResourceTypes(service=True, container=True, object=True),
    permission=AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
    expiry=EXPIRY, version="2025-11-05")
read_only_sas = generate_account_sas(
    DEV_ACCOUNT, DEV_KEY,
    resource_types=ResourceTypes(container=True, object=True),
    permission=AccountSasPermissions(read=True, list=True),
    expiry=EXPIRY, version="2025-11-05")

json.dump({"generator": f"azure-storage-blob {azure.storage.blob.__version__}",
           "account_sas_rwdlac": account_sas, "account_sas_read_only": read_only_sas},
          sys.stdout, indent=2)
sys.stdout.write("\n")
