"""``free_port`` picks listening ports outside the range outgoing connections take theirs from."""

from __future__ import annotations

import socket

from cth_shared.embedded import _ephemeral_range, free_port


def test_free_ports_lie_below_the_ephemeral_range_and_can_be_bound() -> None:
    low, high = _ephemeral_range()
    assert 1024 < low <= high
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < low for port in ports)
    assert len(ports) > 1  # random picks: two servers started together rarely get the same one
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_picked(monkeypatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # Only the taken port and one free one to choose from: the taken one must be skipped.
        free = free_port()
        choices = iter([busy, busy, free])
        monkeypatch.setattr("cth_shared.embedded.random.choice", lambda _candidates: next(choices))
        assert free_port() == free
