"""A journal on a host's in-memory disk keeps journal.py's promises when the disk fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenhad.journal import Journal, JournalError
from xenhad.virtual.disk import MemoryDisk

PATH = Path("/virtual/host1/state/journal.jsonl")


@pytest.mark.parametrize("op", ["write", "fsync"])
def test_a_failing_disk_refuses_the_append_and_leaves_no_trace_of_it(op: str) -> None:
    disk = MemoryDisk()
    journal = Journal(PATH, disk=disk)
    journal.append({"i": 1})
    disk.fail(op)
    with pytest.raises(JournalError, match="Input/output error"):
        journal.append({"i": 2})
    assert journal.failure is not None and disk.failures >= 1
    disk.heal(op)
    journal.append({"i": 3})
    assert journal.failure is None
    assert [r["i"] for r in Journal(PATH, disk=disk).replay().records] == [1, 3]
    assert disk.read(PATH) == b'{"i":1}\n{"i":3}\n'


def test_compaction_on_a_memory_disk_renames_over_the_open_journal() -> None:
    disk = MemoryDisk()
    journal = Journal(PATH, disk=disk)
    for i in range(5):
        journal.append({"i": i})
    journal.compact(lambda r: r["i"] >= 3)
    journal.append({"i": 5})
    assert [r["i"] for r in Journal(PATH, disk=disk).replay().records] == [3, 4, 5]
