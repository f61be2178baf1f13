"""Runs scim2-tester (PyPI, the python-scim project's conformance checker) against a SCIM server.

Usage: python run_scim2_tester.py BASE_URL TOKEN
Prints one JSON object per check: {"title", "status", "reason", "resource_type"}.
"""

import json
import sys

from httpx2 import Client
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import check_server

base_url, token = sys.argv[1], sys.argv[2]
http = Client(base_url=base_url.rstrip("/") + "/", headers={"Authorization": f"Bearer {token}"}, timeout=30)
client = SyncSCIMClient(http)
for result in check_server(client, raise_exceptions=False):
    print(
        json.dumps(
            {
                "title": result.title,
                "status": result.status.name,
                "reason": None if result.reason is None else str(result.reason),
                "resource_type": result.resource_type,
            }
        ),
        flush=True,
    )
