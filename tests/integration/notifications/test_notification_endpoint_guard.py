"""With the production endpoint policy, an organization cannot point deliveries at internal addresses."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cth_shared.auth import issue_token

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notification_support import PCP_TIN, schema_connection, start_notifications

pytestmark = pytest.mark.integration


async def test_subscriptions_to_loopback_private_metadata_or_plain_http_endpoints_are_refused(
    isolated: Any, tmp_path: Path
) -> None:
    process = start_notifications(isolated, tmp_path, WEBHOOK_ALLOW_PRIVATE_NETWORKS="false")
    try:
        await process.wait_healthy(timeout=60)
        conn = await schema_connection(isolated)
        token = await issue_token(conn, PCP_TIN, label="pcp practice")
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=process.base_url, timeout=10) as api:
            for url, reason in [
                ("https://127.0.0.1:9/hook", "loopback"),
                ("https://169.254.169.254/latest/meta-data/", "link-local"),
                ("https://10.0.0.8/hook", "private"),
                ("http://8.8.8.8/hook", "https"),
            ]:
                response = await api.post("/subscriptions", headers=auth,
                                          json={"channel": "webhook", "endpoint_url": url})
                assert response.status_code == 422, (url, response.text)
                assert reason in response.json()["detail"], response.text
            # An inbox subscription names no endpoint and is unaffected.
            inbox = await api.post("/subscriptions", headers=auth, json={"channel": "inbox"})
            assert inbox.status_code == 201, inbox.text
        assert await conn.fetchval("SELECT count(*) FROM subscriptions") == 1
        await conn.close()
    finally:
        assert process.terminate(timeout=20) == 0, process.log_tail()
