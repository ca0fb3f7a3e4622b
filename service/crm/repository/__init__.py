"""All SQL of the CRM feature, one module per concern; none of it commits (the caller's
transaction does): `outbox` (claiming, leasing and recording deliveries), `outbox_admin` (the
outbox as the API lists and requeues it), `health` (what the dispatchers learnt about the CRM),
`views` (what the CRM shows per invoice), `adoption` (statuses a person set in the CRM, taken
into ledgerlink) and `cursor` (the read-back's place in the CRM's list)."""
