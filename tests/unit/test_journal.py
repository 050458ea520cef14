"""The journal on a real file: durability, crash leftovers, compaction, permissions."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import xenhad.journal as journal_module
from small_disk import fill, small_disk
from xenhad.journal import Journal, JournalError, ProblemKind


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.jsonl"


def lines(p: Path) -> list[bytes]:
    return p.read_bytes().split(b"\n")


# -- append and replay --------------------------------------------------------------------


def test_appended_records_are_there_after_reopening(path: Path) -> None:
    j = Journal(path)
    j.append({"t": 1.5, "incident": "i1", "host": "h1", "event": "Opened"})
    j.append({"t": 2.0, "incident": "i1", "host": "h1", "action": "Fence", "nested": {"a": [1]}})
    # A second Journal on the same path is what a restarted daemon sees.
    report = Journal(path).replay()
    assert report.records == [
        {"t": 1.5, "incident": "i1", "host": "h1", "event": "Opened"},
        {"t": 2.0, "incident": "i1", "host": "h1", "action": "Fence", "nested": {"a": [1]}},
    ]
    assert report.problems == []


def test_one_record_is_one_line(path: Path) -> None:
    j = Journal(path)
    j.append({"why": "line\nbreak and \u2028 separator", "name": "h\u00f6st"})
    assert lines(path)[-1] == b""
    assert len(lines(path)) == 2
    assert Journal(path).replay().records == [
        {"why": "line\nbreak and \u2028 separator", "name": "h\u00f6st"}
    ]


def test_the_line_is_fsynced_before_append_returns(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Journal(path).append({"n": 0})  # file exists: only the append's own fsync is watched
    synced: list[bytes] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            synced.append(os.pread(fd, 1 << 16, 0))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    j = Journal(path)
    j.append({"n": 1})
    assert synced and synced[-1] == b'{"n":0}\n{"n":1}\n'


def test_creating_the_file_fsyncs_its_directory(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced_dirs: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st_ = os.fstat(fd)
        if stat.S_ISDIR(st_.st_mode):
            synced_dirs.append(st_.st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    Journal(path).append({"n": 1})
    assert path.parent.stat().st_ino in synced_dirs
    assert path.parent.parent.stat().st_ino in synced_dirs  # the state dir was created too


def test_missing_journal_replays_empty(path: Path) -> None:
    assert Journal(path).replay().records == []


def test_blank_lines_are_ignored(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b'{"a":1}\n\n   \n{"a":2}\n')
    report = Journal(path).replay()
    assert report.records == [{"a": 1}, {"a": 2}]
    assert report.problems == []


def test_a_second_writer_appends_after_us_not_over_us(path: Path) -> None:
    # O_APPEND: every write lands at the end, whoever else wrote since we opened.
    first, second = Journal(path), Journal(path)
    for i in range(5):
        first.append({"by": "first", "i": i})
        second.append({"by": "second", "i": i})
    records = Journal(path).replay().records
    assert len(records) == 10
    assert [r["by"] for r in records] == ["first", "second"] * 5


# -- crash leftovers ----------------------------------------------------------------------


def test_torn_last_line_is_ignored_reported_and_cut_away(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b'{"n":1}\n{"n":2}\n{"n":3,"act')  # kill -9 mid-write
    j = Journal(path)
    report = j.replay()
    assert report.records == [{"n": 1}, {"n": 2}]
    assert [(p.kind, p.line) for p in report.problems] == [(ProblemKind.TORN, 3)]
    assert "torn last line" in str(report.problems[0])
    assert '{"n":3,"act' in str(report.problems[0])

    j.append({"n": 4})
    assert path.read_bytes() == b'{"n":1}\n{"n":2}\n{"n":4}\n'
    report = Journal(path).replay()
    assert report.records == [{"n": 1}, {"n": 2}, {"n": 4}]
    assert report.problems == []


def test_torn_line_is_reported_even_when_the_first_call_is_an_append(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b'{"n":1}\n{"n":')
    j = Journal(path)
    j.append({"n": 2})
    report = j.replay()
    assert report.records == [{"n": 1}, {"n": 2}]
    assert [p.kind for p in report.problems] == [ProblemKind.TORN]


def test_a_complete_record_without_its_newline_is_still_torn(path: Path) -> None:
    # append writes the newline with the record and returns only after fsync: no newline
    # means the append never returned, so the step was never acted on.
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b'{"n":1}\n{"n":2}')
    report = Journal(path).replay()
    assert report.records == [{"n": 1}]
    assert [p.kind for p in report.problems] == [ProblemKind.TORN]


def test_corrupt_middle_lines_are_skipped_and_reported(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    path.write_bytes(
        b'{"n":1}\n'
        b'{"n":2, garbage\n'
        b'[1, 2, 3]\n'
        b'\xff\xfe not utf-8\n'
        b'{"n":5}\n'
    )
    report = Journal(path).replay()
    assert report.records == [{"n": 1}, {"n": 5}]
    assert [(p.kind, p.line) for p in report.problems] == [
        (ProblemKind.CORRUPT, 2), (ProblemKind.CORRUPT, 3), (ProblemKind.CORRUPT, 4)
    ]
    assert "not an object" in str(report.problems[1])
    for problem in report.problems:
        assert "\n" not in str(problem)


def test_a_long_corrupt_line_is_shortened_in_the_report(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b"x" * 10_000 + b"\n")
    (problem,) = Journal(path).replay().problems
    assert len(str(problem)) < 300


# -- records the journal refuses ----------------------------------------------------------


@pytest.mark.parametrize("record,words", [
    ([1, 2], "must be a dict, not list"),
    ("text", "must be a dict, not str"),
    ({1: "x"}, "key 1 is not a string"),
    ({"a": {1, 2}}, "not JSON-serialisable"),
    ({"a": object()}, "not JSON-serialisable"),
    ({"a": math.nan}, "not JSON-serialisable"),
])
def test_bad_records_are_refused_with_one_line_and_nothing_written(
    path: Path, record: object, words: str
) -> None:
    j = Journal(path)
    j.append({"ok": True})
    before = path.read_bytes()
    with pytest.raises(JournalError, match=words) as info:
        j.append(record)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before


def test_unwritable_place_is_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state dir should be")
    with pytest.raises(JournalError, match="cannot open the journal") as info:
        Journal(blocker / "journal.jsonl").append({"a": 1})
    assert "\n" not in str(info.value)


# -- compaction -------------------------------------------------------------------------


def filled(path: Path, n: int) -> Journal:
    j = Journal(path)
    for i in range(n):
        j.append({"i": i, "open": i % 3 == 0})
    return j


def test_compact_keeps_only_matching_records(path: Path) -> None:
    j = filled(path, 9)
    result = j.compact(lambda r: bool(r["open"]))
    assert (result.kept, result.dropped) == (3, 6)
    assert [r["i"] for r in Journal(path).replay().records] == [0, 3, 6]


def test_appends_after_compaction_go_to_the_new_file(path: Path) -> None:
    j = filled(path, 5)
    j.compact(lambda r: r["i"] >= 3)
    j.append({"i": 99})
    assert [r["i"] for r in Journal(path).replay().records] == [3, 4, 99]
    assert [r["i"] for r in j.replay().records] == [3, 4, 99]


def test_compaction_drops_corrupt_lines(path: Path) -> None:
    path.parent.mkdir(mode=0o700)
    path.write_bytes(b'{"i":1}\nnot json\n{"i":2}\n')
    j = Journal(path)
    result = j.compact(lambda r: True)
    assert (result.kept, result.dropped) == (2, 1)
    report = Journal(path).replay()
    assert report.records == [{"i": 1}, {"i": 2}] and report.problems == []


class Crash(BaseException):
    """Stands for the process dying at this instant: nothing after it runs."""


def test_crash_before_the_rename_leaves_the_old_journal(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = filled(path, 6)
    old = path.read_bytes()

    def die(*_: object) -> None:
        raise Crash

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(Crash):
        j.compact(lambda r: r["i"] > 3)
    monkeypatch.undo()
    leftovers = [p.name for p in path.parent.iterdir()]
    assert len(leftovers) == 2  # the journal and the half-done compaction

    # The daemon restarts: the old journal is whole, the leftover is cleaned away.
    restarted = Journal(path)
    assert [r["i"] for r in restarted.replay().records] == list(range(6))
    assert path.read_bytes() == old
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_crash_after_the_rename_leaves_the_new_journal(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = filled(path, 6)

    def die(_: Path) -> None:
        raise Crash

    monkeypatch.setattr(journal_module, "_fsync_dir", die)
    with pytest.raises(Crash):
        j.compact(lambda r: r["i"] > 3)
    monkeypatch.undo()
    assert [r["i"] for r in Journal(path).replay().records] == [4, 5]


def test_failed_compaction_is_an_error_and_the_journal_keeps_working(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = filled(path, 3)

    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(JournalError, match="old journal is intact") as info:
        j.compact(lambda r: False)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    j.append({"i": 3})
    assert [r["i"] for r in Journal(path).replay().records] == [0, 1, 2, 3]


CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from xenhad.journal import Journal

    delay = float(sys.argv[2])
    if delay:
        # SIGKILL from a timer lands between any two steps of append or compact.
        signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGKILL))
        signal.setitimer(signal.ITIMER_REAL, delay)
    j = Journal(Path(sys.argv[1]))
    n = max(r["i"] for r in j.replay().records) + 1
    while True:
        j.append({"i": n, "pad": "x" * 20000})
        n += 1
        j.compact(lambda r: r["i"] > n - 50)
        print(n, flush=True)
""")


def killed_writer(path: Path, *, after_lines: int = 0, timer: float = 0.0) -> None:
    """Run CHILD on `path` and kill -9 it: after it printed `after_lines` loops, or when
    its own timer fires. Returns once it is dead."""
    filled(path, 10).close()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(timer)],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(journal_module.__file__).parents[1])},
    )
    assert child.stdout is not None
    try:
        if not timer:
            for _ in range(after_lines):
                assert child.stdout.readline(), "the child died on its own"
            child.send_signal(signal.SIGKILL)
        else:
            child.stdout.read()  # until the timer kills it
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        child.kill()
        child.stdout.close()


def assert_whole(path: Path) -> None:
    report = Journal(path).replay()
    assert all(p.kind is ProblemKind.TORN for p in report.problems)
    numbers = [r["i"] for r in report.records]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert 1 <= len(numbers) <= 51
    # A compaction cut short left its temporary file; reopening removed it.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loops", [1, 20, 33])
def test_kill_9_from_outside_leaves_a_whole_journal(path: Path, loops: int) -> None:
    """A real process appending and compacting in a loop is killed mid-way; the journal
    it leaves holds a contiguous run of whole records (at most a torn last line)."""
    killed_writer(path, after_lines=loops)
    assert_whole(path)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timer", [0.15, 0.2, 0.25, 0.3, 0.35, 0.4])
def test_kill_9_between_any_two_steps_leaves_a_whole_journal(path: Path, timer: float) -> None:
    killed_writer(path, timer=timer)
    assert_whole(path)


# -- permissions ------------------------------------------------------------------------


def test_state_dir_is_created_0700_and_journal_0600(path: Path) -> None:
    old = os.umask(0)
    try:
        Journal(path).append({"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_loose_journal_is_tightened_to_0600(path: Path) -> None:
    path.parent.mkdir(mode=0o755)
    path.write_bytes(b'{"a":1}\n')
    path.chmod(0o644)
    assert Journal(path).replay().records == [{"a": 1}]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # An existing directory is the operator's: its mode is left alone.
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755


def test_compacted_journal_is_0600(path: Path) -> None:
    old = os.umask(0)
    try:
        j = filled(path, 3)
        j.compact(lambda r: True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_records_are_plain_json_other_tools_can_read(path: Path) -> None:
    Journal(path).append({"t": 1.0, "host": "h", "kind": "down"})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"t": 1.0, "host": "h", "kind": "down"}
    ]


# -- a disk that fills up (issue 25) --------------------------------------------------------


def test_a_failed_append_on_a_full_disk_leaves_the_journal_whole(tmp_path: Path) -> None:
    # A real full disk: the kernel takes what fits of a long line, then says ENOSPC.
    with small_disk(tmp_path / "disk", kib=32) as disk:
        j = Journal(disk / "journal.jsonl")
        j.append({"i": 0})
        j.append({"i": 1})
        filler = fill(disk)
        with pytest.raises(JournalError, match="No space left on device") as info:
            j.append({"i": 2, "pad": "x" * 20000})
        assert "\n" not in str(info.value) and str(disk) in str(info.value)
        # Nothing of the failed line is left in the file: the file is whole.
        assert (disk / "journal.jsonl").read_bytes() == b'{"i":0}\n{"i":1}\n'
        assert j.failure == str(info.value)
        assert j.check() is not None  # still full
        filler.unlink()
        assert j.check() is None
        j.append({"i": 3})  # once space is back, the daemon carries on
        assert j.failure is None
        report = Journal(disk / "journal.jsonl").replay()
        assert [r["i"] for r in report.records] == [0, 1, 3]
        assert report.problems == []
        j.close()


def test_a_failed_append_that_cannot_be_cut_back_at_once_is_cut_before_the_next(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a disk that fails for a while (EIO): the partial line stays until the next
    # append, which cuts it before writing, and never writes after it.
    j = Journal(path)
    j.append({"i": 0})
    real_write = os.write

    def half_then_eio(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 100:
            real_write(fd, bytes(data[:50]))
            raise OSError(5, "Input/output error")
        return real_write(fd, data)

    def eio(*_: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "write", half_then_eio)
    monkeypatch.setattr(os, "ftruncate", eio)
    with pytest.raises(JournalError, match="Input/output error"):
        j.append({"i": 1, "pad": "x" * 200})
    assert path.read_bytes().startswith(b'{"i":0}\n{"i":1,"pad":"xxx')
    with pytest.raises(JournalError):
        j.append({"i": 2})  # refused: the torn bytes cannot be cut yet
    monkeypatch.undo()
    j.append({"i": 3})
    assert path.read_bytes() == b'{"i":0}\n{"i":3}\n'
