"""GPU-hours records: every lab's start and stop, kept in a journal on the hub-data volume.

The hub appends one JSON line per event to ``usage.jsonl`` in its data folder
(``names.HUB_DATA_DIR``), flushed to disk before the call returns (``lab`` is the
container's ID, ``gpus`` its device IDs, ``at`` UTC)::

    {"event":"start","lab":"3f9c…","user":"alice","profile":"gpu-1","gpus":["0"],"at":"…"}
    {"event":"stop","lab":"3f9c…","at":"2026-05-01T12:30:00+00:00","reason":"out of memory"}

A lab's interval runs from its start to the next stop of the same container. The file is
only ever appended to, so a crash can tear at most its last line. Reading skips (and
counts) lines it cannot use and events of kinds it does not know, so a torn line or a
newer hub's journal never stops a report.

After the hub was down, :func:`recover` makes the journal agree with Docker: it closes
the intervals of labs that stopped meanwhile and opens those of running labs the journal
does not know, from the labs' labels. ``python3 -m gpuhub.core.usage report`` (what
`invoke usage` runs in the hub container) prints labs, lab-hours and GPU-hours per user
and per profile.

Only the standard library: `invoke usage` checks its ``--since`` on the host with it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gpuhub.core import names
from gpuhub.core.labels import PROFILE as LABEL_PROFILE
from gpuhub.core.labels import SINCE as LABEL_SINCE
from gpuhub.core.labels import USER as LABEL_USER
from gpuhub.core.labels import gpus_of

DEFAULT_JOURNAL = Path(names.HUB_DATA_DIR) / names.USAGE_JOURNAL_FILE
START, STOP = "start", "stop"
STOPPED_WHILE_DOWN = "stopped while the hub was down"
SINCE_FORMS = "30d, 12h, 90m, 2026-04-01 or 2026-04-01T08:00 (UTC unless it has an offset)"

_log = logging.getLogger(__name__)


def timestamp(at: datetime) -> str:
    """``at`` as the journal (and a lab's SINCE label) writes it: ISO, UTC, whole seconds.

    A naive datetime is taken as UTC.
    """
    return _utc(at).isoformat(timespec="seconds")


def parse_time(text: str) -> datetime:
    """An ISO time with an offset, as UTC; ValueError for anything else (a naive time too)."""
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return at.astimezone(UTC)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


# --- the events ------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """One line of the journal."""

    kind: str  # START or STOP
    lab: str  # the lab's container ID
    at: datetime
    user: str = ""  # START only
    profile: str = ""  # START only; "" for a hub without profiles.yaml
    gpus: tuple[str, ...] = ()  # START only: device IDs
    reason: str = ""  # STOP only

    def to_json(self) -> dict:
        line: dict[str, object] = {"event": self.kind, "lab": self.lab}
        if self.kind == START:
            line.update(user=self.user, profile=self.profile, gpus=list(self.gpus))
        line["at"] = timestamp(self.at)
        if self.kind == STOP:
            line["reason"] = self.reason
        return line

    @classmethod
    def from_json(cls, line: dict) -> Event:
        """The event a journal line holds; KeyError, TypeError or ValueError if it is odd."""
        kind, lab = line["event"], line["lab"]
        if kind not in (START, STOP) or not isinstance(lab, str) or not lab:
            raise ValueError("not a start or stop of a lab")
        at = parse_time(line["at"])
        if kind == STOP:
            return cls(STOP, lab, at, reason=_text(line.get("reason", "")))
        gpus = line.get("gpus", [])
        if not isinstance(gpus, list) or not all(isinstance(g, str) for g in gpus):
            raise TypeError("gpus is not a list of device IDs")
        user = _text(line["user"])
        if not user:
            raise ValueError("a start without a user")
        return cls(START, lab, at, user=user, profile=_text(line.get("profile", "")),
                   gpus=tuple(gpus))


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not text")
    return value


@dataclass
class Reading:
    """What a journal holds, and what of it could not be used."""

    events: list[Event] = field(default_factory=list)
    unreadable: int = 0  # lines that are no event (a crash mid-write tears the last one)
    unknown: int = 0  # events of kinds this gpuhub does not know (a newer hub wrote them)


def parse_journal(lines: Iterable[bytes]) -> Reading:
    """The events in journal lines, in order; never raises on a bad line (it is counted)."""
    reading = Reading()
    for raw in lines:
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            reading.unreadable += 1
            continue
        kind = line.get("event") if isinstance(line, dict) else None
        if isinstance(kind, str) and kind not in (START, STOP):
            reading.unknown += 1
            continue
        try:
            reading.events.append(Event.from_json(line))
        except (KeyError, TypeError, ValueError, AttributeError):
            reading.unreadable += 1
    return reading


def read_journal(path: Path) -> Reading:
    """Every event in the journal at ``path``; none if it does not exist yet. OSError else."""
    try:
        with open(path, "rb") as f:
            return parse_journal(f)
    except FileNotFoundError:
        return Reading()


class UsageJournal:
    """The append-only journal at ``path``; one instance may be shared by threads.

    :meth:`started` and :meth:`stopped` append one line each and return once it is on disk
    (``os.write``, so no buffer is left to flush, then ``os.fsync``). The file is
    created with mode 0600.

    They never raise: a lab must not fail to start or stop because its accounting did. A
    failed write (disk full, volume gone) is logged as an error and they return False;
    the records then miss that event (at the next hub start :func:`recover` opens a
    running lab's interval from its labels, and closes one whose stop was lost at the
    last time the journal proves).
    """

    def __init__(self, path: Path | str, log: logging.Logger | None = None):
        self.path = Path(path)
        self.log = log or _log
        # Re-entrant: recover() holds it across reading the journal and appending to it.
        self._lock = threading.RLock()

    def started(self, lab_id: str, user: str, profile: str, gpus: Sequence[str],
                at: datetime) -> bool:
        """Record that ``user``'s lab ``lab_id`` runs from ``at`` with ``gpus``."""
        return self._append(lambda: Event(START, lab_id, at, user=user, profile=profile or "",
                                          gpus=tuple(gpus)))

    def stopped(self, lab_id: str, at: datetime, reason: str) -> bool:
        """Record that lab ``lab_id`` stopped at ``at``, and why (e.g. "out of memory")."""
        return self._append(lambda: Event(STOP, lab_id, at, reason=reason or ""))

    def read(self) -> Reading:
        with self._lock:
            return read_journal(self.path)

    def _append(self, event) -> bool:
        """Write ``event()``: built in here, so odd arguments are logged like a full disk."""
        try:
            line = event().to_json()
            data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            with self._lock:
                self._write(data)
        # Anything at all: the start or stop being recorded matters more than its record.
        except Exception as err:
            self.log.error("Could not record a lab's start or stop in %s (GPU-hours miss "
                           "it): %s", self.path, err)
            return False
        return True

    def _write(self, data: bytes) -> None:
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a crash tore the last line: this one stays whole
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # the new file's name must survive a crash too
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


# --- intervals and recovery -----------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """One lab's run: from its start to its stop (None: it still runs, as far as we know)."""

    lab: str
    user: str
    profile: str
    gpus: tuple[str, ...]
    start: datetime
    stop: datetime | None = None
    reason: str = ""


def intervals(events: Iterable[Event]) -> list[Interval]:
    """Each start paired with the next stop of the same lab; in the order of the starts.

    A start of a lab whose interval is open, and a stop of a lab with none open, are
    ignored: an event recorded twice (a stop seen by poll() and by stop()) counts once.
    """
    found: list[Interval] = []
    open_at: dict[str, int] = {}  # lab -> index in found
    for e in events:
        if e.kind == START and e.lab not in open_at:
            open_at[e.lab] = len(found)
            found.append(Interval(e.lab, e.user, e.profile, e.gpus, e.at))
        elif e.kind == STOP and e.lab in open_at:
            i = open_at.pop(e.lab)
            found[i] = replace(found[i], stop=max(e.at, found[i].start), reason=e.reason)
    return found


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover` recorded, by lab (container ID); a failed write is left out."""

    closed: list[str] = field(default_factory=list)  # stopped while the hub was down
    opened: list[str] = field(default_factory=list)  # running, unknown to the journal


def _same_container(a: str, b: str) -> bool:
    """Docker's full ID and its short form (12 characters or more) name one container."""
    return a == b or (min(len(a), len(b)) >= 12 and (a.startswith(b) or b.startswith(a)))


def recover(journal: UsageJournal, running: Sequence[Mapping], now: datetime) -> Recovery:
    """Make the journal agree with Docker after the hub was down (stopped or crashed).

    ``running``: the project's running lab containers, each ``{"id": container ID,
    "labels": {label: value}}``.

    - An open interval whose lab no longer runs is closed, reason "stopped while the hub
      was down", at the latest time the journal proves: that of the last event written
      after its start (the hub was up then), or else its start. The lab's time after
      that is not counted: so a crash loses at most the open interval, never a closed one.
    - A running lab with no open interval gets a start from its labels (USER, GPUS,
      PROFILE, and SINCE; ``now`` if SINCE is unreadable), though no earlier than its
      last recorded stop. Containers without a USER label are no labs and are skipped.

    Idempotent: a second run finds nothing to do and appends nothing. Like the journal's
    writes it never raises: a journal it cannot read is logged, and nothing is recovered.
    """
    now = _utc(now)
    done = Recovery()
    with journal._lock:  # no start or stop of another thread in between
        try:
            events = journal.read().events
        except OSError as err:
            journal.log.error("Could not read the usage records %s, so labs that stopped "
                              "while the hub was down stay open there: %s", journal.path, err)
            return done
        latest: list[datetime] = []  # latest[i]: the latest time of events[i:]
        for e in reversed(events):
            latest.append(max(e.at, latest[-1]) if latest else e.at)
        latest.reverse()
        open_start: dict[str, int] = {}  # lab -> index of its open start in events
        last_stop: dict[str, datetime] = {}
        for i, e in enumerate(events):
            if e.kind == START:
                open_start.setdefault(e.lab, i)
            elif e.lab in open_start:
                del open_start[e.lab]
                last_stop[e.lab] = max(e.at, last_stop.get(e.lab, e.at))
        running_ids = [str(r.get("id") or "") for r in running]
        for lab, i in open_start.items():
            if not any(_same_container(lab, rid) for rid in running_ids if rid):
                if journal.stopped(lab, latest[i], STOPPED_WHILE_DOWN):
                    done.closed.append(lab)
        for container in running:
            lab, labels = str(container.get("id") or ""), container.get("labels") or {}
            if not lab or not labels.get(LABEL_USER):
                continue
            if any(_same_container(lab, known) for known in open_start):
                continue
            since = _since(labels, lab, now, journal.log)
            stops = [at for known, at in last_stop.items() if _same_container(lab, known)]
            gpus = gpus_of(labels)
            if journal.started(lab, labels[LABEL_USER], labels.get(LABEL_PROFILE) or "", gpus,
                               max([since, *stops])):
                done.opened.append(lab)
    return done


def _since(labels: Mapping, lab: str, now: datetime, log: logging.Logger) -> datetime:
    try:
        return parse_time(labels[LABEL_SINCE])
    except (KeyError, TypeError, ValueError):
        log.warning("Lab %s has no readable %s label (%r); its GPU-hours count from now",
                    lab, LABEL_SINCE, labels.get(LABEL_SINCE))
        return now


# --- the report ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One user's or one profile's use within the report's window."""

    name: str
    labs: int
    lab_hours: float
    gpu_hours: float


def report(spans: Iterable[Interval], since: datetime | None,
           now: datetime) -> tuple[list[Row], list[Row]]:
    """Labs, lab-hours and GPU-hours per user, and per profile, within [since, now].

    An interval counts only its part inside the window; an open one counts up to ``now``.
    GPU-hours are a lab's hours times its number of GPUs. A lab counts in ``labs`` when
    its interval touches the window. ``since`` None: from the first record. A lab with no
    profile counts under "-". Rows: most GPU-hours first, then most lab-hours, then by name.
    """
    now = _utc(now)
    low = _utc(since) if since is not None else None
    tallies: tuple[dict, dict] = ({}, {})
    for span in spans:
        stop = span.stop or now
        if span.start > now or (low is not None and stop < low):
            continue
        begin = span.start if low is None else max(span.start, low)
        hours = max((min(stop, now) - begin).total_seconds(), 0) / 3600
        for tally, key in zip(tallies, (span.user, span.profile or "-")):
            labs, lab_hours, gpu_hours = tally.get(key, (0, 0.0, 0.0))
            tally[key] = (labs + 1, lab_hours + hours, gpu_hours + hours * len(span.gpus))
    by_user, by_profile = (sorted((Row(k, *v) for k, v in t.items()), key=_heaviest_first)
                           for t in tallies)
    return by_user, by_profile


def _heaviest_first(row: Row) -> tuple:
    return -row.gpu_hours, -row.lab_hours, row.name


def _table(head: str, rows: list[Row]) -> list[str]:
    table = [(head, "LABS", "LAB-HOURS", "GPU-HOURS")] + [
        (r.name, str(r.labs), f"{r.lab_hours:.2f}", f"{r.gpu_hours:.2f}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return ["  ".join([row[0].ljust(widths[0])] + [v.rjust(w) for v, w in
                                                  zip(row[1:], widths[1:])]) for row in table]


def as_text(by_user: list[Row], by_profile: list[Row], since: datetime | None,
            now: datetime) -> str:
    """Two aligned tables (per user, per profile) under a line naming the window."""
    window = f"from {timestamp(since)}" if since is not None else "from the first record"
    lines = [f"Lab use {window} to {timestamp(now)}"]
    if not by_user:
        return "\n".join(lines + ["No lab ran in this time."])
    total = Row("", sum(r.labs for r in by_user), sum(r.lab_hours for r in by_user),
                sum(r.gpu_hours for r in by_user))
    lines += ["", *_table("USER", by_user), "", *_table("PROFILE", by_profile), "",
              f"Total: {total.labs} lab(s), {total.lab_hours:.2f} lab-hours, "
              f"{total.gpu_hours:.2f} GPU-hours"]
    return "\n".join(lines)


CSV_HEADER = ("by", "name", "labs", "lab_hours", "gpu_hours")


def as_csv(by_user: list[Row], by_profile: list[Row]) -> str:
    """One header row, then one row per user and per profile: ``by`` says which.

    Hours with three decimals; no total row (a spreadsheet sums one ``by`` column).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for by, rows in (("user", by_user), ("profile", by_profile)):
        for r in rows:
            writer.writerow((by, r.name, r.labs, f"{r.lab_hours:.3f}", f"{r.gpu_hours:.3f}"))
    return out.getvalue()


_DURATION = re.compile(r"(\d{1,9})([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_since(value: str, now: datetime) -> datetime:
    """The start of the window ``--since`` names: a duration back from ``now``, or a time.

    ValueError (one line naming the value and the forms accepted) for anything else.
    """
    text = value.strip()
    try:
        if m := _DURATION.fullmatch(text):
            return _utc(now) - timedelta(**{_UNITS[m[2]]: int(m[1])})
        return _utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError):
        raise ValueError(f"--since {value!r} is neither a time back from now nor a date; "
                         f"give one of {SINCE_FORMS}") from None


# --- the command line ----------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"error: {message} (see `python3 -m gpuhub.core.usage report --help`)\n")


def main(argv: Sequence[str] | None = None, now: datetime | None = None) -> int:
    """``python3 -m gpuhub.core.usage report [--since 30d] [--csv] [--journal PATH]``.

    Exit status: 0 printed, 2 bad arguments, 1 the journal cannot be read; errors are one
    line on stderr, as are notes (no records yet, lines skipped).
    """
    parser = _Parser(prog="python3 -m gpuhub.core.usage",
                     description="The hub's records of lab starts and stops (GPU-hours).")
    commands = parser.add_subparsers(dest="command", required=True)
    rep = commands.add_parser("report", help="Print labs, lab-hours and GPU-hours per user "
                                             "and per profile.")
    rep.add_argument("--since", help=f"Count only from then on: {SINCE_FORMS} "
                                     "(default: from the first record).")
    rep.add_argument("--csv", action="store_true",
                     help="Print CSV: a header, then one row per user and per profile, "
                          "its column `by` saying which.")
    rep.add_argument("--journal", type=Path, default=DEFAULT_JOURNAL,
                     help=f"The journal to read (default: {DEFAULT_JOURNAL}).")
    args = parser.parse_args(argv)
    now = _utc(now or datetime.now(UTC))
    try:
        since = parse_since(args.since, now) if args.since is not None else None
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.journal.exists():
        print(f"note: no usage records yet: {args.journal} does not exist (the hub writes "
              "it when a lab starts)", file=sys.stderr)
    try:
        reading = read_journal(args.journal)
    except OSError as err:
        print(f"error: could not read the usage records {args.journal}: "
              f"{err.strerror or err}", file=sys.stderr)
        return 1
    if reading.unreadable or reading.unknown:
        print(f"note: {args.journal}: skipped {reading.unreadable} unreadable line(s) (a "
              f"crash may tear the last one) and {reading.unknown} event(s) of kinds this "
              "gpuhub does not know", file=sys.stderr)
    by_user, by_profile = report(intervals(reading.events), since, now)
    if args.csv:
        sys.stdout.write(as_csv(by_user, by_profile))
    else:
        print(as_text(by_user, by_profile, since, now))
    return 0


if __name__ == "__main__":
    sys.exit(main())
