"""OpenCRM, behind the CRM feature's protocols: its settings, REST client, field mapping,
connector (delivery) and read-back source. Nothing outside this folder knows OpenCRM's API."""
