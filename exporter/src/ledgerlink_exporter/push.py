"""Deciding what to send (batches, what the state file says is already there) and sending it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

from ledgerlink_exporter.client import Acknowledgement, BatchRejected, DeliveryError
from ledgerlink_exporter.sage import Posting, SageExport
from ledgerlink_exporter.state import OpenState, PushState, known_hashes

SOURCE = "sage50-exporter"
MAX_BATCH = 5000
# Bytes of a content hash (32 hex digits).
_DIGEST = 16
# Postings whose acknowledged hashes are looked up together while planning.
_LOOKUP = 1000

Deliver = Callable[[bytes, str], Awaitable[Acknowledgement]]


@dataclass(frozen=True)
class Batch:
    number: int
    postings: tuple[Posting, ...]
    hashes: tuple[str, ...]
    body: bytes
    webhook_id: str

    @property
    def tran_numbers(self) -> tuple[int, ...]:
        return tuple(posting.tran_number for posting in self.postings)


@dataclass(frozen=True)
class PushPlan:
    # Made one at a time as they are iterated (PlannedBatches): a big first load would not
    # fit in memory as bodies.
    batches: Sequence[Batch]
    # Postings to send, in all the batches.
    postings: int
    # Postings not sent because the state file says the server has this very version.
    unchanged: int
    skipped_types: dict[str, int]
    unlinked_allocations: int
    # To record once every batch is acknowledged; None when the export has no modify dates.
    high_water: dt.datetime | None
    # Postings read from the cleared years' tables (AUDIT_HISTORY_*).
    from_history: int = 0
    # What the console should say before anything is sent (a modify date in the future).
    warnings: tuple[str, ...] = ()
    # Postings to send by type.
    by_type: Mapping[str, int] = field(default_factory=dict)

    def postings_by_type(self) -> dict[str, int]:
        return dict(sorted(self.by_type.items()))


@dataclass
class PushReport:
    plan: PushPlan
    batches_acknowledged: int = 0
    postings_applied: int = 0
    postings_unchanged: int = 0
    batches_replayed: int = 0
    postings_replayed: int = 0
    postings_rejected: int = 0
    postings_not_sent: int = 0
    invoices_affected: int = 0
    error: str | None = None

    def record(self, batch: Batch, ack: Acknowledgement) -> None:
        self.batches_acknowledged += 1
        if ack.replayed:
            self.batches_replayed += 1
            self.postings_replayed += len(batch.postings)
            return
        self.postings_applied += ack.postings_applied
        self.postings_unchanged += ack.postings_unchanged
        self.invoices_affected += ack.invoices_affected


def content_hash(posting: Posting) -> str:
    return hashlib.sha256(canonical_json(posting.to_wire())).hexdigest()[:32]


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def plan_push(
    export: SageExport,
    state: PushState | None,
    *,
    batch_size: int,
    now: dt.datetime | None = None,
) -> PushPlan:
    """What to send: every posting the state file does not hold with this very content.

    Nothing is passed over for its modify date: a date in the future (a PC clock set wrong
    once) or a state file whose mark is later than a posting would otherwise hide it for good.
    The look-back only narrows what an ODBC read asks Sage for. The mark to record is the
    latest modify date, but never later than `now` (local time, as Sage's dates are).
    """
    if not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch size must be between 1 and {MAX_BATCH}")
    state = state or PushState()
    chosen = array("q")  # positions in export.postings
    digests = bytearray()  # their content hashes, _DIGEST bytes each
    by_type: Counter[str] = Counter()
    unchanged = position = 0
    for chunk in _chunks(export.postings, _LOOKUP):
        known = known_hashes(state.acknowledged, [posting.tran_number for posting in chunk])
        for posting in chunk:
            digest = content_hash(posting)
            if known.get(posting.tran_number) == digest:
                unchanged += 1
            else:
                chosen.append(position)
                digests += bytes.fromhex(digest)
                by_type[posting.type] += 1
            position += 1
    now = now or local_now()
    mark, warnings = state.high_water, tuple[str, ...]()
    if mark is not None and mark > now:
        mark, warnings = now, (_future_mark(mark, now),)
    high_water, ahead = _latest(mark, export.revisions, now)
    return PushPlan(
        batches=PlannedBatches(export, state, chosen, digests, batch_size),
        postings=len(chosen),
        unchanged=unchanged,
        skipped_types=dict(export.skipped_types),
        unlinked_allocations=export.unlinked_allocations,
        high_water=high_water,
        from_history=export.from_history,
        warnings=warnings + ahead,
        by_type=by_type,
    )


def _chunks(postings: Iterable[Posting], size: int) -> Iterator[list[Posting]]:
    chunk: list[Posting] = []
    for posting in postings:
        chunk.append(posting)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class PlannedBatches(Sequence[Batch]):
    """The batches of a plan, each made (postings, body, webhook-id) when it is reached:
    iterating reads the export once, in order; an index makes that one batch."""

    def __init__(
        self,
        export: SageExport,
        state: PushState,
        chosen: array[int],
        digests: bytearray,
        batch_size: int,
    ) -> None:
        self._export = export
        self._state = state
        self._chosen = chosen
        self._digests = digests
        self._size = batch_size

    def __len__(self) -> int:
        return -(-len(self._chosen) // self._size)

    @overload
    def __getitem__(self, index: int) -> Batch: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Batch]: ...

    def __getitem__(self, index: int | slice) -> Batch | Sequence[Batch]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("batch index out of range")
        first = index * self._size
        positions = self._chosen[first : first + self._size]
        span = self._export.postings[positions[0] : positions[-1] + 1]
        chunk = [(span[p - positions[0]], self._digest(first + i)) for i, p in enumerate(positions)]
        return _batch(index + 1, chunk, self._export, self._state)

    def __iter__(self) -> Iterator[Batch]:
        chosen, size = self._chosen, self._size
        chunk: list[tuple[Posting, str]] = []
        taken = number = 0
        if not chosen:
            return
        for position, posting in enumerate(self._export.postings):
            if chosen[taken] != position:
                continue
            chunk.append((posting, self._digest(taken)))
            taken += 1
            if len(chunk) == size or taken == len(chosen):
                number += 1
                yield _batch(number, chunk, self._export, self._state)
                chunk = []
                if taken == len(chosen):
                    return

    def _digest(self, index: int) -> str:
        return self._digests[index * _DIGEST : (index + 1) * _DIGEST].hex()


def local_now() -> dt.datetime:
    """The PC's local time without an offset: what Sage's RECORD_MODIFY_DATE holds."""
    return dt.datetime.now().replace(microsecond=0)


def clamp_high_water(state: PushState, now: dt.datetime) -> str | None:
    """A state file's mark in the future (written while a clock was wrong, or from a row dated
    ahead) is set to `now`; the warning says so. Such a mark cannot tell what was sent before
    it: the caller reads everything again."""
    if state.high_water is None or state.high_water <= now:
        return None
    warning = _future_mark(state.high_water, now)
    state.high_water = now
    return warning


def _future_mark(mark: dt.datetime, now: dt.datetime) -> str:
    return (
        f"the state file's high-water mark {_when(mark)} is in the future (a clock set "
        f"wrong?): taken as now, {_when(now)}; every posting is read and those the state file "
        "does not hold as they are now are sent"
    )


def _batch(
    number: int, chunk: Sequence[tuple[Posting, str]], export: SageExport, state: PushState
) -> Batch:
    postings = tuple(posting for posting, _ in chunk)
    body = canonical_json({"source": SOURCE, "postings": [p.to_wire() for p in postings]})
    return Batch(
        number=number,
        postings=postings,
        hashes=tuple(digest for _, digest in chunk),
        body=body,
        webhook_id=webhook_id(body, _revision_key(postings, export, state)),
    )


def webhook_id(body: bytes, revision_key: bytes) -> str:
    """Stable for the same batch of the same Sage edits, so a re-run after a crash replays.

    The body alone is not enough: a posting edited A -> B -> A would produce A's old body
    again, and the server would answer with the stored reply to the first A and apply
    nothing, leaving B in place. Sage's modify dates (and the state file's previous hash)
    differ between the two As, so they go into the id too.
    """
    return "msg_" + hashlib.sha256(body + b"\n" + revision_key).hexdigest()[:32]


def _revision_key(postings: Sequence[Posting], export: SageExport, state: PushState) -> bytes:
    key = []
    known = known_hashes(state.acknowledged, [posting.tran_number for posting in postings])
    for posting in postings:
        revision = export.revisions.get(posting.tran_number)
        previous = known.get(posting.tran_number, "")
        key.append([revision.isoformat() if revision else "", previous])
    return canonical_json(key)


def _latest(
    current: dt.datetime | None, revisions: Mapping[int, dt.datetime | None], now: dt.datetime
) -> tuple[dt.datetime | None, tuple[str, ...]]:
    """The mark to record, never later than `now`, and a warning when a posting's modify
    date lies in the future: as a mark it would hide every posting modified before it from
    an ODBC read's look-back."""
    latest = current
    ahead: list[tuple[dt.datetime, int]] = []
    for tran_number, revision in revisions.items():
        if revision is None:
            continue
        if revision > now:
            ahead.append((revision, tran_number))
        elif latest is None or revision > latest:
            latest = revision
    if not ahead:
        return latest, ()
    last, tran_number = max(ahead)
    postings = "a posting" if len(ahead) == 1 else f"{len(ahead)} postings"
    warning = (
        f"{postings} modified in the future, the latest transaction {tran_number} on "
        f"{_when(last)} (a clock set wrong in Sage?): the high-water mark is taken as now, "
        f"{_when(now)}"
    )
    return now, (warning,)


def _when(stamp: dt.datetime) -> str:
    return stamp.isoformat(sep=" ", timespec="seconds")


class StateTracker:
    """Records each acknowledged batch in the state file as soon as the server has it (one
    transaction a batch), and the mark once every batch is."""

    def __init__(self, opened: OpenState) -> None:
        self._opened = opened

    def acknowledge(self, batch: Batch) -> None:
        self._opened.acknowledge(list(zip(batch.tran_numbers, batch.hashes, strict=True)))

    def finish(self, high_water: dt.datetime | None) -> None:
        self._opened.complete(high_water)


async def run_push(
    plan: PushPlan,
    deliver: Deliver,
    *,
    tracker: StateTracker | None = None,
    on_batch: Callable[[Batch], None] | None = None,
) -> PushReport:
    """Sends the batches in order and stops at the first one the server does not take."""
    report = PushReport(plan)
    done = 0
    for batch in plan.batches:
        try:
            ack = await deliver(batch.body, batch.webhook_id)
        except DeliveryError as exc:
            report.error = f"batch {batch.number} of {len(plan.batches)}: {exc}"
            unsent = plan.postings - done - len(batch.postings)
            if isinstance(exc, BatchRejected):
                report.postings_rejected = len(batch.postings)
            else:
                unsent += len(batch.postings)
            report.postings_not_sent = unsent
            return report
        done += len(batch.postings)
        report.record(batch, ack)
        if tracker is not None:
            tracker.acknowledge(batch)
        if on_batch is not None:
            on_batch(batch)
    if tracker is not None:
        tracker.finish(plan.high_water)
    return report
