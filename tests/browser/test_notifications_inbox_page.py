"""The live inbox page in a real headless chromium: a new alert appears without reload; acknowledging updates the API.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromedriver``) and ``selenium``
(pinned in services/notifications/pyproject.toml); skipped only when chromium is absent.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from cth_shared.auth import issue_token

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "notifications"))
from notification_support import (
    PCP_NPI,
    PCP_TIN,
    event_bytes,
    eventually,
    publish,
    schema_connection,
    start_notifications,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("chromium") is None,
                       reason="chromium is not installed (apt-get install chromium chromium-driver)"),
]

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="cth-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def wait_for(driver: Any, script: str, what: str, timeout: float = 20) -> Any:
    """Evaluate ``script`` (a JS expression) in the page until it is truthy."""
    return await eventually(lambda: asyncio.to_thread(driver.execute_script, f"return {script}"), timeout, what)


async def test_an_alert_published_after_the_page_loaded_appears_live_and_acknowledging_it_updates_the_api(
    isolated: Any, tmp_path: Path, browser: Any
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    service = start_notifications(isolated, tmp_path)
    try:
        await service.wait_healthy(timeout=60)
        conn = await schema_connection(isolated)
        pcp_token = await issue_token(conn, PCP_TIN, recipient_id=PCP_NPI, label="dr. pcp inbox")

        await asyncio.to_thread(browser.get, f"{service.base_url}/inbox/page")
        browser.find_element(By.ID, "token").send_keys(pcp_token)
        browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
        await wait_for(browser, "document.getElementById('live').dataset.state === 'open'", "live stream open")
        assert browser.execute_script("return document.querySelectorAll('li.alert').length") == 0
        assert browser.execute_script("return sessionStorage.getItem('cth_token')") == pcp_token
        assert pcp_token not in browser.current_url

        await publish(isolated, "attribution", event_bytes("attribution.changed"))
        await eventually(lambda: conn.fetchval("SELECT count(*) FROM care_team_history"), what="care team known")
        await publish(isolated, "encounters", event_bytes("encounter.admitted"))

        await wait_for(browser, "document.querySelector('li.alert') !== null", "alert pushed into the open page")
        # Read in one script call: the live list may re-render between a lookup and a read.
        item = browser.execute_script(
            "const li = document.querySelector('li.alert'); return {id: li.dataset.notificationId,"
            " priority: li.dataset.priority, badge: li.querySelector('.badge.priority').innerText,"
            " text: li.innerText, ack: li.querySelector('button.ack').getAttribute('aria-label')}")
        notification_id = item["id"]
        assert item["priority"] == "high"
        assert "high" in item["badge"].lower()
        assert "Admission" in item["text"] and "M000001" in item["text"]
        assert "St. Example General Hospital" in item["text"]
        assert "Acknowledge" in (item["ack"] or "")
        for attempt in range(5):  # a real click; a re-render between lookup and click retries it
            try:
                browser.find_element(By.CSS_SELECTOR, f'[data-notification-id="{notification_id}"] button.ack').click()
                break
            except StaleElementReferenceException:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as api:
            async def acknowledged() -> bool:
                response = await api.get(f"/inbox/{notification_id}", headers={"Authorization": f"Bearer {pcp_token}"})
                return response.json()["status"] == "acknowledged"

            await eventually(acknowledged, what="API shows the alert acknowledged")
            evidence = (await api.get(f"/notifications/{notification_id}/evidence",
                                      headers={"Authorization": f"Bearer {pcp_token}"})).json()
            assert evidence["acknowledged_at"] is not None
        # The default view lists unacknowledged alerts: the acknowledged one leaves it.
        await wait_for(browser, f"document.querySelector('[data-notification-id=\"{notification_id}\"]') === null",
                       "acknowledged alert leaves the not-acknowledged view")
        await conn.close()
    finally:
        browser.quit()
        assert service.terminate(timeout=20) == 0, service.log_tail()
