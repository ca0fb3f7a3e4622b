"""What the server has acknowledged, kept between runs so the next run sends only changes.

The file holds a content hash per acknowledged tran_number and a high-water mark: the latest
RECORD_MODIFY_DATE of an export whose every batch was acknowledged. The hashes are saved after
each acknowledged batch; the high-water mark only when a whole run succeeds, because batches
are not in modification order: advancing it early could push an unsent older row out of the
look-back window, and it would never be sent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledgerlink_exporter.sage import ExportFileError

_VERSION = 1


@dataclass
class PushState:
    high_water: dt.datetime | None = None
    acknowledged: dict[int, str] = field(default_factory=dict)


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> PushState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return PushState()
        except OSError as exc:
            raise self._error(f"cannot read the state file ({exc.strerror})") from None
        try:
            return _parse(json.loads(raw))
        except _Unusable as exc:
            raise self._error(f"{exc}; move it away to start afresh") from None
        except (ValueError, TypeError, KeyError, RecursionError):
            raise self._error(
                "not a ledgerlink exporter state file; move it away to start afresh"
            ) from None

    def save(self, state: PushState) -> None:
        """Replaces the file in one step, so a crash leaves the old state or the new one."""
        payload = {
            "version": _VERSION,
            "high_water": state.high_water.isoformat() if state.high_water else None,
            "acknowledged": {str(k): v for k, v in sorted(state.acknowledged.items())},
        }
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.")
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(json.dumps(payload).encode())
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            raise self._error(f"cannot write the state file ({exc.strerror})") from None

    def _error(self, message: str) -> ExportFileError:
        return ExportFileError(str(self.path), message)


class _Unusable(ValueError):
    """A state file of ours whose content cannot be used; `str()` says which part."""


def _parse(data: Any) -> PushState:
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        raise ValueError("unknown state file version")
    acknowledged = data["acknowledged"]
    if not isinstance(acknowledged, dict):
        raise ValueError("acknowledged must be an object")
    return PushState(
        high_water=_high_water(data["high_water"]),
        acknowledged={int(k): str(v) for k, v in acknowledged.items()},
    )


def _high_water(value: Any) -> dt.datetime | None:
    """Sage's RECORD_MODIFY_DATE as the exporter wrote it: local time, without an offset,
    as Sage keeps it (an offset could not be compared with Sage's dates)."""
    if value is None or value == "":
        return None
    try:
        stamp = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        stamp = None
    if stamp is None:
        raise _Unusable(f"high_water {json.dumps(value)[:60]} is not a date and time")
    if stamp.tzinfo is not None:
        raise _Unusable(
            f"high_water {value} has a time zone; the exporter writes Sage's local time without one"
        )
    return stamp
