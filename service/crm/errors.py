"""What can go wrong calling a CRM, whichever CRM it is.

The dispatcher and the read-back decide by these classes alone (halt, back off, retry the
message, count an attempt), so a connector maps its CRM's failures onto them. Messages are safe
to log and to show an operator: they never carry credentials.
"""

from __future__ import annotations


class CrmError(Exception):
    """A failed CRM call, with a message safe to log and to show an operator."""


class CrmHalt(CrmError):
    """A problem every call shares and only a person can fix: deliveries halt, none is lost."""


class CrmAuthError(CrmHalt):
    """The CRM refused our credentials (or our address): retrying cannot help."""


class CrmMisconfigured(CrmHalt):
    """The CRM's answers do not carry a field a setting names (the invoice number)."""


class CrmUnavailable(CrmError):
    """Network error, timeout, 5xx, 429 or an answer that is not the API's: try again later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CrmBlocked(CrmUnavailable):
    """Refused by a firewall in front of the CRM, not by the CRM: try again later."""


class CrmRejected(CrmError):
    """The CRM answered with an error about this request."""


class CrmAnswerTooLarge(CrmError):
    """An answer grew past the size allowed: refused, never held whole."""


class CrmPagingBroken(CrmError):
    """A list that does not end: the CRM answered a page it had already given (it ignores
    where a page starts), or more pages than one lookup or scan may read."""


class CrmInvoiceNotFound(CrmRejected):
    """No CRM invoice matches (yet: it may not have been created there)."""


class CrmAmbiguous(CrmRejected):
    """Several CRM invoices match one invoice number; none is edited."""
