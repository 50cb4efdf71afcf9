"""The REST API for producers and tools, mounted by the Recon app under ``/recon/api/v1``.

One module per resource (merchants, accounts, rules, staging entries, uploads, ledger, tracker,
reviews), each calling the owner modules' functions (no SQL here); and the conventions every
resource shares: ``problems`` (RFC 9457 errors), ``pagination`` (opaque keyset cursors),
``idempotency`` (``Idempotency-Key`` on creating POSTs), ``fields`` (exact decimals, RFC 3339 UTC
times), ``request_ids`` and ``limits`` (both an ``http_middleware``).
"""
