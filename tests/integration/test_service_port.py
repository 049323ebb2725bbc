"""A service whose HTTP port another process took before it could bind it starts again on a free one."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from cth_shared.testing import ServiceProcess

pytestmark = pytest.mark.integration


async def test_a_service_whose_port_is_taken_is_started_again_on_a_free_one(isolated: Any, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = ServiceProcess("attribution", isolated.service_env(HTTP_PORT=str(port),
                                                                    OTEL_INSTRUMENT_ASYNCPG="false"),
                                 log_dir=tmp_path)
        try:
            await service.wait_healthy_on_a_free_port(timeout=60)
            assert service.running
            assert int(service.env["HTTP_PORT"]) != port
            assert "Address already in use" in service.log_path.read_text()  # the first start did fail
        finally:
            service.terminate(timeout=20)
