"""The peers' roster in the state directory: whom a restarted daemon beats to before it has
read the pool (peers/roster.py). Real files and the virtual pool's in-memory disk alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenhad.journal import Disk, OsDisk
from xenhad.model import HostView, PoolView
from xenhad.peers.link import Peer
from xenhad.peers.roster import Roster, RosterError, RosterFile, roster_of
from xenhad.virtual.disk import MemoryDisk

ME = "host-1"


def pool(*hosts: str, uuid: str = "pool-a") -> PoolView:
    views = {h: HostView(h, f"ref-{h}", h, f"10.0.0.{i + 1}", True, True)
             for i, h in enumerate(hosts)}
    return PoolView("pool-ref", hosts[0], False, views, {}, pool_uuid=uuid)


@pytest.fixture(params=["os", "memory"])
def disk(request: pytest.FixtureRequest) -> Disk:
    return OsDisk() if request.param == "os" else MemoryDisk()


def test_a_host_first_started_has_no_roster(tmp_path: Path, disk: Disk) -> None:
    assert RosterFile(tmp_path / "state" / "peers.json", disk=disk).load() is None


def test_what_a_read_says_is_what_the_next_start_beats_to(tmp_path: Path, disk: Disk) -> None:
    roster = roster_of(pool(ME, "host-3", "host-2"), ME)
    assert roster is not None
    assert [p.uuid for p in roster.hosts] == [ME, "host-2", "host-3"]
    file = RosterFile(tmp_path / "state" / "peers.json", disk=disk)
    file.save(roster)
    assert file.load() == roster
    moved = Roster("pool-a", ME, (Peer(ME, "10.0.0.1"), Peer("host-2", "10.0.9.9")))
    file.save(moved)  # a host readdressed: replaced whole
    assert file.load() == moved


def test_a_host_not_in_the_pool_read_gets_no_roster() -> None:
    assert roster_of(pool("host-2", "host-3"), ME) is None


@pytest.mark.parametrize("content", [
    b"", b"{\"version\": 1, \"pool\": \"p\", \"me\": \"host-1\", \"hos",  # torn
    b"\xff\xfe", b"[]", b"{\"version\": 99}",
    b"{\"version\": 1, \"pool\": \"p\", \"me\": \"host-1\", \"hosts\": [[\"h\"]]}",
    b"{\"version\": 1, \"pool\": 7, \"me\": \"host-1\", \"hosts\": []}",
])
def test_an_unusable_roster_is_one_line_saying_which_file(tmp_path: Path,
                                                          content: bytes) -> None:
    path = tmp_path / "peers.json"
    path.write_bytes(content)
    with pytest.raises(RosterError) as caught:
        RosterFile(path).load()
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_failed_save_leaves_the_last_roster_whole(tmp_path: Path) -> None:
    disk = MemoryDisk()
    file = RosterFile(tmp_path / "peers.json", disk=disk)
    first = roster_of(pool(ME, "host-2"), ME)
    assert first is not None
    file.save(first)
    for op in ("write", "fsync"):
        disk.fail(op)
        second = roster_of(pool(ME, "host-2", "host-3"), ME)
        assert second is not None
        with pytest.raises(RosterError, match="cannot write"):
            file.save(second)
        disk.heal()
        assert file.load() == first
