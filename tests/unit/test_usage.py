"""GPU-hours records: the journal on disk, recovery from labels, the report, `invoke usage`."""

import csv
import io
import json
import logging
import os
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from invoke import Exit, Result

import tasks as tasks_py
from gpuhub.core import labels, usage
from gpuhub.core.usage import (
    START,
    STOP,
    STOPPED_WHILE_DOWN,
    Event,
    Interval,
    Recovery,
    Row,
    UsageJournal,
    intervals,
    recover,
    report,
)
from gpuhub.tasks import project as project_mod
from gpuhub.tasks import usage as usage_task
from support.mock_docker import commands, docker_context
from support.tasks import compose

ROOT = project_mod.ROOT
LAB_A = "a" * 64  # Docker's full container IDs
LAB_B = "b" * 64
LAB_C = "c" * 64


def at(hhmm: str, day: int = 1) -> datetime:
    hours, minutes = map(int, hhmm.split(":"))
    return datetime(2026, 5, day, hours, minutes, tzinfo=UTC)


@pytest.fixture
def journal(tmp_path) -> UsageJournal:
    return UsageJournal(tmp_path / "usage.jsonl")


def lines(journal: UsageJournal) -> list[dict]:
    return [json.loads(line) for line in journal.path.read_text().splitlines()]


# --- the journal on disk -----------------------------------------------------------------

def test_journal_round_trip(journal):
    assert journal.started(LAB_A, "alice", "gpu-2", ["GPU-aaa", "GPU-bbb"], at("10:00"))
    assert journal.stopped(LAB_A, at("12:30"), "out of memory")
    assert lines(journal) == [
        {"event": "start", "lab": LAB_A, "user": "alice", "profile": "gpu-2",
         "gpus": ["GPU-aaa", "GPU-bbb"], "at": "2026-05-01T10:00:00+00:00"},
        {"event": "stop", "lab": LAB_A, "at": "2026-05-01T12:30:00+00:00",
         "reason": "out of memory"},
    ]
    reading = journal.read()
    assert reading.events == [
        Event(START, LAB_A, at("10:00"), user="alice", profile="gpu-2",
              gpus=("GPU-aaa", "GPU-bbb")),
        Event(STOP, LAB_A, at("12:30"), reason="out of memory")]
    assert (reading.unreadable, reading.unknown) == (0, 0)
    assert intervals(reading.events) == [Interval(LAB_A, "alice", "gpu-2", ("GPU-aaa", "GPU-bbb"),
                                                  at("10:00"), at("12:30"), "out of memory")]


def test_journal_is_created_for_the_hub_alone(journal):
    journal.started(LAB_A, "alice", "", [], at("10:00"))
    assert stat.S_IMODE(journal.path.stat().st_mode) == 0o600


def test_times_are_written_in_utc_whole_seconds(journal):
    cest = datetime(2026, 5, 1, 14, 0, 7, 999, tzinfo=timezone(timedelta(hours=2)))
    journal.started(LAB_A, "alice", "", [], cest)
    journal.stopped(LAB_A, datetime(2026, 5, 1, 13, 0), "")  # naive: taken as UTC
    assert [line["at"] for line in lines(journal)] == ["2026-05-01T12:00:07+00:00",
                                                       "2026-05-01T13:00:00+00:00"]


def test_each_line_is_whole_on_disk_before_the_call_returns(journal, monkeypatch):
    on_disk_at_fsync = []
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.samefile(f"/proc/self/fd/{fd}", journal.path):
            on_disk_at_fsync.append(journal.path.read_bytes())
        real_fsync(fd)

    monkeypatch.setattr(usage.os, "fsync", fsync)
    journal.started(LAB_A, "alice", "cpu", [], at("10:00"))
    assert len(on_disk_at_fsync) == 1 and on_disk_at_fsync[0].endswith(b"}\n")
    journal.stopped(LAB_A, at("11:00"), "stopped by the hub")
    assert len(on_disk_at_fsync) == 2
    assert on_disk_at_fsync[1] == journal.path.read_bytes()
    assert on_disk_at_fsync[1].count(b"\n") == 2


def test_a_write_error_is_logged_and_never_raised(tmp_path, caplog):
    journal = UsageJournal(tmp_path / "no-such-folder" / "usage.jsonl")
    with caplog.at_level(logging.ERROR):
        assert journal.started(LAB_A, "alice", "cpu", [], at("10:00")) is False
        assert journal.stopped(LAB_A, at("11:00"), "gone") is False
    assert len(caplog.records) == 2
    assert "Could not record a lab's start or stop" in caplog.records[0].getMessage()
    assert "no-such-folder" in caplog.records[0].getMessage()


def test_odd_arguments_are_logged_too(journal, caplog):
    with caplog.at_level(logging.ERROR):
        assert journal.started(LAB_A, "alice", "cpu", None, at("10:00")) is False
        assert journal.stopped(LAB_A, "11:00", "gone") is False
    assert len(caplog.records) == 2
    assert not journal.path.exists()


def test_threads_never_mix_their_lines(journal):
    def record(n):
        for i in range(50):
            journal.started(f"lab-{n}-{i}", f"user{n}", "cpu", ["0"], at("10:00"))

    threads = [threading.Thread(target=record, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reading = journal.read()
    assert len(reading.events) == 400 and reading.unreadable == 0


def test_a_torn_last_line_is_skipped_and_the_next_line_stays_whole(journal):
    journal.started(LAB_A, "alice", "cpu", [], at("10:00"))
    with open(journal.path, "ab") as f:  # the hub crashed in the middle of a write
        f.write(b'{"event":"stop","lab":"' + LAB_A.encode() + b'","at":"2026-05-')
    reading = journal.read()
    assert [e.kind for e in reading.events] == [START] and reading.unreadable == 1
    journal.stopped(LAB_A, at("11:00"), "stopped by the hub")
    reading = journal.read()
    assert [e.kind for e in reading.events] == [START, STOP] and reading.unreadable == 1
    assert intervals(reading.events)[0].stop == at("11:00")


def test_bad_lines_and_unknown_kinds_are_counted_never_fatal(journal):
    journal.started(LAB_A, "alice", "cpu", [], at("10:00"))
    bad = [
        b'{"event":"pause","lab":"x","at":"2026-05-01T10:30:00+00:00"}',  # a newer hub's
        b'{"event":"snapshot"}',
        b"[1, 2]",
        b'"just text"',
        b"null",
        b'{"event":"start"}',
        b'{"event":"start","lab":"x","user":"","at":"2026-05-01T10:00:00+00:00"}',
        b'{"event":"start","lab":"x","user":"bob","gpus":"0,1","at":"2026-05-01T10:00:00+00:00"}',
        b'{"event":"stop","lab":"x","at":"not a time"}',
        b'{"event":"stop","lab":"x","at":"2026-05-01T10:00:00"}',  # no offset
        b'{"event":"stop","lab":7,"at":"2026-05-01T10:00:00+00:00"}',
        b'{"event":"stop","lab":"x","at":"2026-05-01T10:00:00+00:00","reason":["r"]}',
        b"\xff\xfe not utf-8",
        b"[" * 100_000,
        b"",
    ]
    with open(journal.path, "ab") as f:
        f.write(b"\n".join(bad) + b"\n")
    journal.stopped(LAB_A, at("11:00"), "")
    reading = journal.read()
    assert [e.kind for e in reading.events] == [START, STOP]
    assert (reading.unknown, reading.unreadable) == (2, 12)


def test_a_missing_journal_reads_as_empty(journal):
    assert journal.read().events == []


# --- intervals -----------------------------------------------------------------------------

def test_a_start_or_stop_recorded_twice_counts_once():
    events = [Event(START, LAB_A, at("10:00"), user="alice"),
              Event(START, LAB_A, at("10:05"), user="alice"),
              Event(STOP, LAB_A, at("11:00"), reason="out of memory"),
              Event(STOP, LAB_A, at("11:01"), reason="stopped by the hub"),
              Event(STOP, LAB_B, at("11:02"))]
    assert intervals(events) == [Interval(LAB_A, "alice", "", (), at("10:00"), at("11:00"),
                                          "out of memory")]


# --- recovery --------------------------------------------------------------------------------

def running_lab(lab, user="carol", gpus="0,1", since="2026-05-01T09:00:00+00:00",
                profile="gpu-2") -> dict:
    found = {labels.PROJECT: "gpuhub", labels.USER: user, labels.GPUS: gpus,
             labels.SINCE: since, labels.PROFILE: profile}
    return {"id": lab, "labels": {k: v for k, v in found.items() if v is not None}}


def test_recovery_closes_a_lab_that_stopped_while_the_hub_was_down(journal):
    journal.started(LAB_A, "alice", "gpu-1", ["0"], at("10:00"))
    journal.started(LAB_B, "bob", "cpu", [], at("11:00"))
    journal.stopped(LAB_B, at("11:30"), "stopped by the hub")
    # The hub crashed; alice's lab died meanwhile.
    assert recover(journal, [], at("15:00")) == Recovery(closed=[LAB_A])
    assert lines(journal)[-1] == {"event": "stop", "lab": LAB_A,
                                  "at": "2026-05-01T11:30:00+00:00",
                                  "reason": STOPPED_WHILE_DOWN}
    spans = intervals(journal.read().events)
    assert [(s.lab, s.start, s.stop) for s in spans] == [
        (LAB_A, at("10:00"), at("11:30")), (LAB_B, at("11:00"), at("11:30"))]


def test_recovery_closes_a_lab_the_journal_proves_nothing_after_at_its_start(journal):
    journal.started(LAB_A, "alice", "gpu-1", ["0"], at("10:00"))
    recover(journal, [], at("15:00"))
    assert intervals(journal.read().events)[0].stop == at("10:00")


def test_recovery_keeps_a_lab_that_still_runs(journal):
    journal.started(LAB_A, "alice", "gpu-1", ["0"], at("10:00"))
    before = journal.path.read_bytes()
    assert recover(journal, [running_lab(LAB_A[:12], user="alice")], at("15:00")) == Recovery()
    assert journal.path.read_bytes() == before


def test_recovery_starts_a_running_lab_the_journal_does_not_know_from_its_labels(journal):
    not_a_lab = {"id": "d" * 64, "labels": {labels.PROJECT: "gpuhub"}}
    assert recover(journal, [running_lab(LAB_C), not_a_lab], at("15:00")) == Recovery(
        opened=[LAB_C])
    assert lines(journal) == [{"event": "start", "lab": LAB_C, "user": "carol",
                               "profile": "gpu-2", "gpus": ["0", "1"],
                               "at": "2026-05-01T09:00:00+00:00"}]


def test_recovery_of_a_lab_without_profile_or_readable_since(journal, caplog):
    with caplog.at_level(logging.WARNING):
        recover(journal, [running_lab(LAB_C, gpus="", since="yesterday", profile=None)],
                at("15:00"))
    assert lines(journal) == [{"event": "start", "lab": LAB_C, "user": "carol", "profile": "",
                               "gpus": [], "at": "2026-05-01T15:00:00+00:00"}]
    assert "count from now" in caplog.text


def test_recovery_reopens_a_stopped_lab_that_runs_no_earlier_than_its_stop(journal):
    journal.started(LAB_C, "carol", "gpu-2", ["0", "1"], at("09:00"))
    journal.stopped(LAB_C, at("12:00"), "stopped by the hub")  # but Docker still runs it
    recover(journal, [running_lab(LAB_C)], at("15:00"))
    spans = intervals(journal.read().events)
    assert [(s.start, s.stop) for s in spans] == [(at("09:00"), at("12:00")), (at("12:00"), None)]


def test_recovery_is_idempotent(journal):
    journal.started(LAB_A, "alice", "gpu-1", ["0"], at("10:00"))
    journal.started(LAB_B, "bob", "cpu", [], at("11:00"))
    running = [running_lab(LAB_B, user="bob"), running_lab(LAB_C)]
    assert recover(journal, running, at("15:00")) == Recovery(closed=[LAB_A], opened=[LAB_C])
    after_first = journal.path.read_bytes()
    assert recover(journal, running, at("16:00")) == Recovery()
    assert journal.path.read_bytes() == after_first


def test_recovery_of_an_unreadable_journal_is_logged_not_raised(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert recover(UsageJournal(tmp_path), [running_lab(LAB_C)], at("15:00")) == Recovery()
    assert "Could not read the usage records" in caplog.text


# --- the report -------------------------------------------------------------------------------

def span(user, profile, gpus, start, stop=None):
    return Interval(f"{user}-{start}", user, profile, tuple(gpus), start, stop)


SPANS = [
    span("alice", "gpu-2", ["0", "1"], at("08:00"), at("12:00")),  # half in the window
    span("alice", "cpu", [], at("12:30"), at("13:00")),
    span("bob", "gpu-1", ["2"], at("11:00")),  # still running: counts up to now
    span("carol", "gpu-1", ["3"], at("06:00"), at("09:00")),  # before the window
]


def test_report_clips_to_the_window_and_multiplies_by_the_gpus():
    by_user, by_profile = report(SPANS, since=at("10:00"), now=at("14:00"))
    assert by_user == [Row("alice", 2, 2.5, 4.0), Row("bob", 1, 3.0, 3.0)]
    assert by_profile == [Row("gpu-2", 1, 2.0, 4.0), Row("gpu-1", 1, 3.0, 3.0),
                          Row("cpu", 1, 0.5, 0.0)]


def test_report_without_since_counts_every_record():
    by_user, _ = report(SPANS, since=None, now=at("14:00"))
    assert by_user == [Row("alice", 2, 4.5, 8.0), Row("bob", 1, 3.0, 3.0),
                       Row("carol", 1, 3.0, 3.0)], "ties: by name"


def test_report_puts_labs_without_profile_under_a_dash():
    _, by_profile = report([span("alice", "", [], at("10:00"), at("11:00"))], None, at("12:00"))
    assert by_profile == [Row("-", 1, 1.0, 0.0)]


def test_text_report_is_two_aligned_tables():
    by_user, by_profile = report(SPANS, since=at("10:00"), now=at("14:00"))
    assert usage.as_text(by_user, by_profile, at("10:00"), at("14:00")).splitlines() == [
        "Lab use from 2026-05-01T10:00:00+00:00 to 2026-05-01T14:00:00+00:00",
        "",
        "USER   LABS  LAB-HOURS  GPU-HOURS",
        "alice     2       2.50       4.00",
        "bob       1       3.00       3.00",
        "",
        "PROFILE  LABS  LAB-HOURS  GPU-HOURS",
        "gpu-2       1       2.00       4.00",
        "gpu-1       1       3.00       3.00",
        "cpu         1       0.50       0.00",
        "",
        "Total: 3 lab(s), 5.50 lab-hours, 7.00 GPU-hours",
    ]


def test_text_report_of_a_quiet_window():
    assert usage.as_text([], [], None, at("14:00")).splitlines() == [
        "Lab use from the first record to 2026-05-01T14:00:00+00:00", "No lab ran in this time."]


def test_csv_report_has_a_header_and_a_by_column():
    by_user, by_profile = report(SPANS, since=at("10:00"), now=at("14:00"))
    rows = list(csv.reader(io.StringIO(usage.as_csv(by_user, by_profile))))
    assert rows == [
        ["by", "name", "labs", "lab_hours", "gpu_hours"],
        ["user", "alice", "2", "2.500", "4.000"],
        ["user", "bob", "1", "3.000", "3.000"],
        ["profile", "gpu-2", "1", "2.000", "4.000"],
        ["profile", "gpu-1", "1", "3.000", "3.000"],
        ["profile", "cpu", "1", "0.500", "0.000"],
    ]


def test_csv_quotes_what_needs_it():
    out = usage.as_csv([Row('a,"b"', 1, 1.0, 0.0)], [])
    assert list(csv.reader(io.StringIO(out)))[1][1] == 'a,"b"'


# --- --since ---------------------------------------------------------------------------------

NOW = at("14:00", day=31)


@pytest.mark.parametrize("value, expected", [
    ("30d", at("14:00", day=1)),
    ("12h", at("02:00", day=31)),
    ("90m", at("12:30", day=31)),
    (" 0d ", NOW),
    ("2026-05-01", at("00:00", day=1)),
    ("2026-05-01T08:00", at("08:00", day=1)),
    ("2026-05-01T10:00:00+02:00", at("08:00", day=1)),
    ("2026-05-01T08:00Z", at("08:00", day=1)),
])
def test_since_accepts_durations_and_dates(value, expected):
    assert usage.parse_since(value, NOW) == expected


@pytest.mark.parametrize("value", ["30", "30x", "d", "-3d", "3.5h", "yesterday", "",
                                   "2026-13-01", "999999999d"])
def test_since_refuses_anything_else_in_one_line(value):
    with pytest.raises(ValueError) as info:
        usage.parse_since(value, NOW)
    message = str(info.value)
    assert f"--since {value!r}" in message and "\n" not in message
    assert "30d, 12h, 90m, 2026-04-01" in message


# --- the command line ------------------------------------------------------------------------

def test_cli_prints_the_report(journal, capsys):
    journal.started(LAB_A, "alice", "gpu-2", ["0", "1"], at("08:00"))
    journal.stopped(LAB_A, at("12:00"), "stopped by the hub")
    assert usage.main(["report", "--journal", str(journal.path), "--since", "4h"],
                      now=at("14:00")) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[2:4] == ["USER   LABS  LAB-HOURS  GPU-HOURS",
                                     "alice     1       2.00       4.00"]
    assert err == ""


def test_cli_prints_csv_and_notes_skipped_lines(journal, capsys):
    journal.started(LAB_A, "alice", "gpu-2", ["0", "1"], at("08:00"))
    with open(journal.path, "ab") as f:
        f.write(b'{"event":"stop","lab":')
    assert usage.main(["report", "--journal", str(journal.path), "--csv"], now=at("09:00")) == 0
    out, err = capsys.readouterr()
    assert out == ("by,name,labs,lab_hours,gpu_hours\nuser,alice,1,1.000,2.000\n"
                   "profile,gpu-2,1,1.000,2.000\n")
    assert err == (f"note: {journal.path}: skipped 1 unreadable line(s) (a crash may tear the "
                   "last one) and 0 event(s) of kinds this gpuhub does not know\n")


def test_cli_without_records_yet(tmp_path, capsys):
    path = tmp_path / "usage.jsonl"
    assert usage.main(["report", "--journal", str(path)], now=at("14:00")) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "No lab ran in this time."
    assert err.startswith(f"note: no usage records yet: {path} does not exist")


def test_cli_bad_since_is_one_line(journal, capsys):
    assert usage.main(["report", "--journal", str(journal.path), "--since", "a month"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("error: --since 'a month' is neither")


def test_cli_unreadable_journal_is_one_line(tmp_path, capsys):
    assert usage.main(["report", "--journal", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not read the usage records {tmp_path}: ")
    assert err.count("\n") == 1


def test_cli_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        usage.main(["report", "--since"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --since: expected one argument") and err.count("\n") == 1


def test_cli_runs_as_a_module(journal):
    journal.started(LAB_A, "alice", "cpu", [], at("08:00"))
    done = subprocess.run([sys.executable, "-m", "gpuhub.core.usage", "report", "--journal",
                           str(journal.path), "--csv"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].startswith("user,alice,1,")


def test_default_journal_is_in_the_hub_data_folder():
    assert usage.DEFAULT_JOURNAL == Path("/srv/jupyterhub/data/usage.jsonl")


# --- invoke usage ----------------------------------------------------------------------------

def test_usage_is_a_task():
    assert "usage" in tasks_py.ns.task_names


@pytest.mark.parametrize("flags, cli", [
    ({}, "python3 -m gpuhub.core.usage report"),
    ({"since": "30d", "csv": True}, "python3 -m gpuhub.core.usage report --since 30d --csv"),
    ({"since": "2026-05-01T10:00:00+02:00"},
     "python3 -m gpuhub.core.usage report --since 2026-05-01T10:00:00+02:00"),
])
def test_usage_runs_the_report_in_the_hub(env_file, capsys, flags, cli):
    path = env_file()
    exec_report = compose(path, f"exec -T hub {cli}")
    c = docker_context((exec_report, Result("by,name,labs,lab_hours,gpu_hours\n",
                                            stderr="note: no usage records yet\n")),
                       running=True)
    usage_task.usage(c, **flags)
    assert commands(c) == [compose(path, "ps --status running --quiet hub"), exec_report]
    out, err = capsys.readouterr()
    assert out == "by,name,labs,lab_hours,gpu_hours\n"
    assert err == "note: no usage records yet\n"


def test_usage_refuses_a_bad_since_before_docker(env_file):
    env_file()
    c = docker_context(running=True)
    with pytest.raises(Exit) as info:
        usage_task.usage(c, since="last month")
    assert info.value.message.startswith("error: --since 'last month' is neither")
    assert "\n" not in info.value.message
    assert commands(c) == []


def test_usage_needs_the_hub_running(env_file):
    env_file()
    with pytest.raises(Exit) as info:
        usage_task.usage(docker_context(running=False))
    assert "is not running" in info.value.message


@pytest.mark.parametrize("stderr, message", [
    ("error: could not read the usage records /srv/jupyterhub/data/usage.jsonl: "
     "Permission denied\n",
     "error: could not read the usage records /srv/jupyterhub/data/usage.jsonl: "
     "Permission denied"),
    ("/usr/local/bin/python3: No module named gpuhub.core.usage\n",
     "error: the running hub predates `invoke usage`; rebuild and restart it with `invoke up`"),
    ("", "error: exit code 1"),
])
def test_usage_failure_is_one_line(env_file, stderr, message):
    path = env_file()
    c = docker_context((compose(path, "exec -T hub python3 -m gpuhub.core.usage report"),
                        Result(stderr=stderr, exited=1)), running=True)
    with pytest.raises(Exit) as info:
        usage_task.usage(c)
    assert info.value.message == message
