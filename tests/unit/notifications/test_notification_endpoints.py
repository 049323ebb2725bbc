"""The endpoint guard: subscriptions may not make the service call internal addresses."""

from __future__ import annotations

import pytest
from notifications.endpoints import EndpointForbidden, check_endpoint, forbidden_address


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",  # noqa: S104 - refused, not bound
    "224.0.0.1", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
])
def test_internal_and_special_addresses_are_forbidden(address: str) -> None:
    assert forbidden_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_unicast_addresses_are_allowed(address: str) -> None:
    assert not forbidden_address(address)


@pytest.mark.parametrize(("url", "reason"), [
    ("https://127.0.0.1/hook", "loopback"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://[::1]:8443/hook", "loopback"),
    ("https://10.0.0.5/hook", "private"),
    ("http://8.8.8.8/hook", "https"),
    ("https://user:pw@8.8.8.8/hook", "credentials"),
    ("ftp://8.8.8.8/hook", "http(s)"),
    ("https://does-not-exist.invalid/hook", "does not resolve"),
])
async def test_the_production_policy_refuses_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(EndpointForbidden, match=reason.replace("(", r"\(").replace(")", r"\)")):
        await check_endpoint(url, allow_private=False)


async def test_a_public_https_literal_passes_and_development_allows_loopback() -> None:
    await check_endpoint("https://8.8.8.8/hook", allow_private=False)
    await check_endpoint("http://127.0.0.1:9000/hook", allow_private=True)
    with pytest.raises(EndpointForbidden, match="credentials"):
        await check_endpoint("http://u:p@127.0.0.1/hook", allow_private=True)
