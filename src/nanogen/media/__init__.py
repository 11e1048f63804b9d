"""Media helpers: fetching input images safely, images (Pillow), video (PyAV)."""
