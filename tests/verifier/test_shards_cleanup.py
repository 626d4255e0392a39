"""What the sharded search leaves behind and how it fails (issue 21's mends): a cluster
address whose answer arrives in pieces is still recognised."""
from __future__ import annotations

from verifier import ray_connect


class _Dribbling:
    """A socket whose peer's bytes come one per recv (TCP may split a frame anywhere)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self) -> "_Dribbling":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def settimeout(self, _t: float) -> None:
        pass

    def sendall(self, _b: bytes) -> None:
        pass

    def recv(self, n: int) -> bytes:
        head, self.data = self.data[:min(n, 1)], self.data[min(n, 1):]
        return head


def test_a_cluster_s_answer_split_across_reads_is_recognised(monkeypatch) -> None:
    """gRPC's SETTINGS frame header (type 4 in its fourth byte) read a byte at a time is
    still a Ray cluster; a peer that closes after three bytes is not."""
    settings = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
    monkeypatch.setattr(ray_connect.socket, "create_connection", lambda *a, **k: _Dribbling(settings))
    assert ray_connect.unreachable("127.0.0.1:6379") == ""
    monkeypatch.setattr(ray_connect.socket, "create_connection", lambda *a, **k: _Dribbling(settings[:3]))
    assert "not a Ray cluster" in ray_connect.unreachable("127.0.0.1:6379")
