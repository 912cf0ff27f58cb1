"""Model upscalers (ESRGAN-family files detected by spandrel): catalog, tiled running, and the built-in filters."""
