"""nanogen: a self-hosted, API-compatible NanoPhoto image and video generation server."""

__version__ = "0.1.0"
