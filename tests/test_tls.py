"""The process's one TLS context (nanogen.tls): shared, and as strict as httpx's own default."""

from __future__ import annotations

import ssl

import httpx

from nanogen.tls import ssl_context


def test_one_context_verifies_certificates_and_host_names_like_httpx_default() -> None:
    context = ssl_context()
    assert context is ssl_context()
    default = httpx.create_ssl_context()
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert (context.verify_mode, context.check_hostname, context.minimum_version) == (
        default.verify_mode,
        default.check_hostname,
        default.minimum_version,
    )
    assert context.cert_store_stats()["x509_ca"] == default.cert_store_stats()["x509_ca"] > 0
