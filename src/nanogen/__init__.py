"""nanogen: a self-hosted, API-compatible NanoPhoto image and video generation server, and its client.

``from nanogen import Client, AsyncClient`` is the SDK (``nanogen.client``); ``nanogen.errors`` is the one
exception tree shared by the server and the SDK. Importing nanogen loads the SDK only (httpx, pydantic):
the server's modules are imported by ``nanogen serve`` / ``nanogen.server`` when used.
"""

__version__ = "0.1.0"

# After __version__: the client's User-Agent reads it.
from nanogen import errors
from nanogen.client import AsyncClient, Client
from nanogen.errors import APIError, NanogenError

__all__ = ["APIError", "AsyncClient", "Client", "NanogenError", "__version__", "errors"]
