"""The Python SDK: ``Client`` (blocking) and ``AsyncClient`` (asyncio) over httpx.

::

    from nanogen import Client

    with Client() as client:  # NANOGEN_API_KEY, NANOGEN_BASE_URL (default http://127.0.0.1:8000)
        image = client.images.generate("a lighthouse at dusk", aspect_ratio="16:9", quality="2K")
        image.download("lighthouse.png")  # waits (polling every 3 s), then saves

        video = client.videos.generate(["a city at dawn", "a coffee cup, steam rising"])
        video.wait(on_progress=print)  # every 5 s, honouring Retry-After, up to a timeout
        video.download("city.mp4")

Request and response models are the server's (``nanogen.schemas``); errors are the server's exception
tree (``nanogen.errors``), rebuilt from each error response with its HTTP status, ``errorCode`` and
extra fields. Works against any server implementing the contract; ``videos.get(generation_id)`` and
uploads of local files are nanogen additions.
"""

from nanogen.client._async import (
    AsyncClient,
    AsyncImageGeneration,
    AsyncImages,
    AsyncUploads,
    AsyncVideoGeneration,
    AsyncVideos,
)
from nanogen.client._base import (
    IMAGE_POLL_INTERVAL_S,
    IMAGE_WAIT_TIMEOUT_S,
    VIDEO_POLL_INTERVAL_S,
    VIDEO_WAIT_TIMEOUT_S,
)
from nanogen.client._sync import Client, ImageGeneration, Images, Uploads, VideoGeneration, Videos

__all__ = [
    "IMAGE_POLL_INTERVAL_S",
    "IMAGE_WAIT_TIMEOUT_S",
    "VIDEO_POLL_INTERVAL_S",
    "VIDEO_WAIT_TIMEOUT_S",
    "AsyncClient",
    "AsyncImageGeneration",
    "AsyncImages",
    "AsyncUploads",
    "AsyncVideoGeneration",
    "AsyncVideos",
    "Client",
    "ImageGeneration",
    "Images",
    "Uploads",
    "VideoGeneration",
    "Videos",
]
