"""The process's one TLS context for outgoing HTTPS: Google's API, webhook deliveries, image URLs.

httpx builds a context for each client or transport it makes, loading the CA bundle each time (~30-50 ms
of CPU); given this one, a new client or transport costs ~0.1 ms. A context is safe to share between
threads and event loops. Made at first use, so ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` set before it count.
"""

from __future__ import annotations

import functools
import ssl

import httpx


@functools.cache
def ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()
