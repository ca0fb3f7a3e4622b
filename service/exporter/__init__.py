"""The Sage-side exporter: reads Sage 50 audit-trail CSV exports and pushes them as signed
batches of postings; plus a demo company generator. Commands: `ledgerlink push`, `ledgerlink demo`.
"""
