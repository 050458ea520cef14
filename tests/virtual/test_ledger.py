"""A long virtual soak runs in parts: `xenhad chaos --virtual --ledger FILE` records each
finished schedule, a second run of the same command plays only what the ledger lacks (a
line torn by a kill included), and the report counts the whole ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenhad.chaos import virtual_run
from xenhad.chaos.ledger import Finished, Ledger
from xenhad.chaos.run import schedule_seed
from xenhad.errors import XenhadError


def finished(seed: int, hosts: int = 3, self_fence: bool = False) -> Finished:
    return Finished(seed=seed, hosts=hosts, self_fence=self_fence, bmc="ok",
                    faults={"crash": 2, "partition": 1}, checks=120, violations=[],
                    recovered_in=12.5, virtual_seconds=41.0, real_seconds=0.4)


def test_a_schedule_is_held_by_its_seed_and_its_pool(tmp_path: Path) -> None:
    path = tmp_path / "soak.jsonl"
    book = Ledger(path)
    book.add(finished(7, hosts=4, self_fence=True))
    again = Ledger(path)
    assert again.finished == [finished(7, hosts=4, self_fence=True)]
    assert again.holds((7, 4, True, "ok"))
    assert not again.holds((7, 4, False, "ok"))  # the same seed on another pool: not run
    assert not again.holds((7, 5, True, "ok"))


def test_a_line_torn_by_a_kill_is_cut_away_and_its_schedule_runs_again(tmp_path: Path) -> None:
    path = tmp_path / "soak.jsonl"
    Ledger(path).add(finished(1))
    with path.open("a") as f:
        f.write(finished(2).line()[:30])
    book = Ledger(path)
    assert [f.seed for f in book.finished] == [1]
    assert book.cut == 30
    assert not book.holds((2, 3, False, "ok"))
    book.add(finished(2))
    assert [f.seed for f in Ledger(path).finished] == [1, 2]


def test_a_file_that_is_no_ledger_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("some notes\nmore\n")
    with pytest.raises(XenhadError, match=r"notes\.txt:1 is not a finished schedule"):
        Ledger(path)


def test_a_soak_resumed_plays_only_what_its_ledger_lacks_and_reports_it_all(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # else main re-executes the process with it
    path = tmp_path / "soak.jsonl"

    def soak(schedules: int) -> str:
        virtual_run.main(schedules=schedules, seed=3, hosts=3, budget_minutes=60, bmc="ok",
                         ledger=path, mix=True)
        return capsys.readouterr().out

    first = soak(2)
    assert first.count("schedule seed ") == 2
    with path.open("a") as f:
        f.write('{"seed": 3000')  # the session ended while the ledger was being written
    second = soak(3)
    assert second.count("schedule seed ") == 1
    assert f"schedule seed {schedule_seed(3, 2)}:" in second
    assert "2 schedules finished before, 2 of this run's 3 among them (a torn last line" in second
    book = Ledger(path)
    assert [f.seed for f in book.finished] == [schedule_seed(3, i) for i in range(3)]
    assert [(f.hosts, f.self_fence) for f in book.finished] == [
        virtual_run.mixed(i) for i in range(3)]
    assert "| 3 |" in second.split("| schedules |")[1]  # the report counts the whole ledger


def test_ledger_and_mix_are_refused_without_virtual_and_mix_with_replay(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xenhad import cli

    assert cli.main(["chaos", "--ledger", str(tmp_path / "soak.jsonl")]) == 2
    assert "--virtual chaos only" in capsys.readouterr().err
    assert cli.main(["chaos", "--virtual", "--mix", "--replay", "5"]) == 2
    assert "--mix plays pools by schedule number" in capsys.readouterr().err
    assert not (tmp_path / "soak.jsonl").exists()
