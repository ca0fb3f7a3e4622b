"""The one rule for the text the service takes: the characters a text field may not hold.

The service refuses a posting whose account_ref, reference, details or nominal_code holds a
control character (C0, DEL, C1), a Unicode line or paragraph separator (U+2028, U+2029), or
a lone surrogate, which no UTF-8 body can carry (service/ingest/schemas.py: its
NO_CONTROL_CHARACTERS pattern, and pydantic-core's own refusal of surrogates). The service
does not carry this package, so it keeps its own spelling of the rule;
tests/exporter/test_text.py checks on every code point that the two agree.

The exporter cleans rather than skips: each such character becomes a space. In Sage's short
text fields one can only be a stray line break or tab, or something pasted in from an email
(U+2028, U+0085); refusing the row would stop the push, and skipping it would hide money.
"""

from __future__ import annotations

import re

# Inclusive ranges of the code points refused, in order.
REFUSED_RANGES = ((0x00, 0x1F), (0x7F, 0x9F), (0x2028, 0x2029), (0xD800, 0xDFFF))

REFUSED = re.compile(
    "[" + "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in REFUSED_RANGES) + "]"
)


def clean(text: str) -> str:
    """`text` as the service takes it: every refused character a space, ends trimmed."""
    return REFUSED.sub(" ", text).strip()
