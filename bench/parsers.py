"""Batch parsing: pydantic (what the webhook uses) against msgspec, CPU per batch (issue 17),
and the webhook's other Python work per batch beside it.

Not part of `make bench`: `python -m bench.parsers`, with msgspec for the comparison
(`uv run --frozen --with msgspec==0.22.0 python -m bench.parsers`; without it, that line is left
out). The same body as bench/ingest.py sends (500 receipts, each with one allocation) is parsed
N times by each; the figure is CPU milliseconds per batch (process time, best of 5 rounds, so
another process's load hardly moves it).

- the webhook's steps: `parse_batch` and its `model_validate_json`, the signature's HMAC, and
  what PostgreSQL is handed: the body's postings array cut out (`received_postings`) or, for
  the batches that cannot be, the postings serialised again.
- pydantic: `service.ingest.parsing.parse_batch`, the webhook's whole parse: strict JSON
  validation with every field constraint, then the exactness, duplicate-key, duplicate
  tran_number and currency checks.
- msgspec: Structs with the same field types, lengths and patterns, amounts decoded as exact
  Decimals (without the ASCII-digits rule for amount strings) and checked (range, whole
  cents) in Python afterwards, plus the same duplicate
  tran_number check. It covers the accepted path only: the 422 texts the contract names (each
  failing field located as `postings[i].field`, with pydantic's messages) would still have to
  be rebuilt from msgspec's single first error.
"""

import datetime as dt
import importlib
import time
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import SecretStr

from bench.ingest import BATCH_SIZE, batches, receipt
from service.ingest.amounts import CENT, MAX_AMOUNT
from service.ingest.parsing import parse_batch, received_postings
from service.ingest.repository import _POSTINGS_JSON
from service.ingest.schemas import FIRST_DATE, LAST_DATE, NO_CONTROL_CHARACTERS, PostingBatch
from service.ingest.signature import Verifier
from tests.support.webhooks import TEST_SECRET, signed_request

ROUNDS = 5
PER_ROUND = 40


def _msgspec_parser() -> Any:
    # Imported by name: msgspec is not a dependency, so mypy cannot see it.
    msgspec: Any = importlib.import_module("msgspec")
    meta = msgspec.Meta
    text = NO_CONTROL_CHARACTERS
    # msgspec reads a Decimal exactly from a JSON number or string (no union with a patterned
    # str allowed: the ASCII-digits rule would be one more check in Python).
    amount: Any = Decimal
    tran: Any = Annotated[int, meta(gt=0, le=2**63 - 1)]
    allocation: Any = msgspec.defstruct(
        "Allocation",
        [
            ("invoice_tran_number", tran),
            ("amount", amount),
            ("foreign_amount", amount | None, None),
            ("date", dt.date | None, None),
            ("deleted", bool, False),
        ],
        forbid_unknown_fields=True,
    )
    posting: Any = msgspec.defstruct(
        "Posting",
        [
            ("tran_number", tran),
            ("type", Literal["SI", "SC", "SR", "SA", "SD", "SP"]),
            ("account_ref", Annotated[str, meta(min_length=1, max_length=32, pattern=text)]),
            ("date", dt.date),
            ("net_amount", amount),
            ("tax_amount", amount),
            ("gross_amount", amount),
            ("reference", Annotated[str, meta(max_length=30, pattern=text)], ""),
            ("details", Annotated[str, meta(max_length=60, pattern=text)], ""),
            ("nominal_code", Annotated[str, meta(max_length=8, pattern=text)], ""),
            ("outstanding", amount | None, None),
            ("currency", Annotated[str, meta(pattern=r"^[A-Z]{3}$")] | None, None),
            ("deleted", bool, False),
            ("allocations", list[allocation], []),
        ],
        forbid_unknown_fields=True,
    )
    batch_type = msgspec.defstruct(
        "Batch",
        [
            (
                "postings",
                Annotated[list[posting], meta(min_length=1, max_length=5000)],
            ),
            ("source", Annotated[str, meta(max_length=100, pattern=text)] | None, None),
        ],
        forbid_unknown_fields=True,
    )

    decoder = msgspec.json.Decoder(batch_type)

    def money(value: Decimal | str, *, positive: bool = False) -> Decimal:
        number = Decimal(value)
        if not (number > 0 if positive else number >= 0) or number > MAX_AMOUNT:
            raise ValueError("amount out of range")
        if number % CENT:
            raise ValueError("more than 2 decimals")
        return number

    def parse(body: bytes) -> Any:
        batch = decoder.decode(body)
        seen: set[int] = set()
        for posting in batch.postings:
            if posting.tran_number in seen:
                raise ValueError("duplicate tran_number")
            seen.add(posting.tran_number)
            if not FIRST_DATE <= posting.date <= LAST_DATE:
                raise ValueError("date out of range")
            posting.net_amount = money(posting.net_amount)
            posting.tax_amount = money(posting.tax_amount)
            posting.gross_amount = money(posting.gross_amount)
            for allocation in posting.allocations:
                allocation.amount = money(allocation.amount, positive=True)
        return batch

    return parse


def _cpu_ms_per_batch(parse: Any, body: bytes) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(PER_ROUND):
            parse(body)
        best = min(best, (time.process_time() - started) / PER_ROUND)
    return best * 1000


def _steps(body: bytes) -> dict[str, float]:
    """CPU ms per batch of each step of the webhook's own Python work on `body`."""
    batch = PostingBatch.model_validate_json(body, strict=True)
    _, headers = signed_request(body)
    verifier = Verifier([SecretStr(TEST_SECRET)], tolerance_seconds=300)
    signed = verifier.check_headers(
        headers["webhook-id"],
        headers["webhook-timestamp"],
        headers["webhook-signature"],
        now=time.time(),
    )
    return {
        "parse_batch": _cpu_ms_per_batch(lambda b: parse_batch(b, base_currency="GBP"), body),
        "model_validate_json": _cpu_ms_per_batch(
            lambda b: PostingBatch.model_validate_json(b, strict=True), body
        ),
        "HMAC": _cpu_ms_per_batch(lambda b: verifier.verify(signed, b), body),
        "received_postings": _cpu_ms_per_batch(lambda b: received_postings(b, batch), body),
        "postings serialised again": _cpu_ms_per_batch(
            lambda _: _POSTINGS_JSON.dump_json(batch.postings), body
        ),
    }


def main() -> None:
    body = batches([receipt(i, 100_000) for i in range(BATCH_SIZE)])[0]
    steps = _steps(body)
    print(
        f"a batch of {BATCH_SIZE} receipts ({len(body):,} bytes), CPU ms per batch, best of "
        f"{ROUNDS} x {PER_ROUND}: "
        + "; ".join(
            f"{name} {ms:.2f} ms ({ms / BATCH_SIZE * 1000:.1f} us/posting)"
            for name, ms in steps.items()
        )
    )
    try:
        msgspec_parse = _msgspec_parser()
    except ModuleNotFoundError:
        print("msgspec is not installed: no comparison (see the module docstring)")
        return
    pydantic_ms = steps["parse_batch"]
    msgspec_ms = _cpu_ms_per_batch(msgspec_parse, body)
    print(
        f"msgspec {msgspec_ms:.2f} ms ({msgspec_ms / BATCH_SIZE * 1000:.1f} us/posting) against "
        f"parse_batch {pydantic_ms:.2f} ms; ratio {msgspec_ms / pydantic_ms:.2f}"
    )


if __name__ == "__main__":
    main()
