"""The HTTP server: a small app factory, dependencies, error responses and one module per API area."""
