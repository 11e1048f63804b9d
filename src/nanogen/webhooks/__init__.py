"""Signed webhooks (docs/api.md, "Webhooks"): when a generation ends, an event is POSTed to the URL its
request named (``webhookUrl``) or to its account's default, signed as Standard Webhooks specifies.

- ``events``: in the very transaction that ends a generation (a task's completion or failure, the
  deadline watchdog, a cancel, the concatenation), the event is written with its exact body and its
  delivery workflow enqueued, so a crash right after the end still delivers it after a restart;
- ``delivery``: one durable DBOS workflow per event (async: a delivery waiting for its next retry
  holds no thread), retried on the schedule of ``NANOGEN_WEBHOOK_RETRY_SCHEDULE`` with durable
  sleeps, the same ``webhook-id`` every time;
- ``secrets``: each account's signing secret derived from the server's master key (never stored);
- ``targets``: target URLs pass the SSRF rules of input images (media/fetch.py), at submit, on
  ``PUT /api/account/webhook`` and again before every attempt (DNS rebinding);
- ``store``: the SQL.
"""
