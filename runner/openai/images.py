"""Images sent inline in chat requests: a `data:` URL decoded into a Pillow image, inside fixed bounds.

    image = decode_data_url("data:image/png;base64,iVBOR...", ImageLimits())   # PIL.Image.Image, RGB
    # ImageRefused(message, code) for anything else; runner.openai.protocol turns it into a 400 naming the part

Only `data:` URLs are read: the server never fetches a URL a request names (no network access on a
client's behalf). The bounds are checked before the work they bound: the base64 length before
decoding it, the width x height in the image header before any pixel is decompressed (a
decompression bomb is a few KB of PNG that unpacks to gigabytes). Pillow opens only the plain raster
formats below: formats such as EPS hand the file to an external program, which a request must never
reach. Animated images give their first frame; every image comes back as RGB, the form chat
processors expect.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")  # what Pillow may open for a request: raster formats it decodes itself


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on the images one request may carry (serve.max_image_bytes / serve.max_image_pixels / max_images)."""

    max_bytes: int = 20 * 1000 * 1000  # decoded bytes of one image (the file, before decompression)
    max_pixels: int = 7680 * 4320  # width x height of one image: an 8K frame, 33.2 megapixels
    max_images: int = 16  # images one request may hold


class ImageRefused(ValueError):
    """An image part that cannot be used; `code` is the OpenAI error code."""

    def __init__(self, message: str, code: str = "invalid_image"):
        super().__init__(message)
        self.code = code


def _payload(url: str) -> str:
    """The base64 text of a data URL, after checking its scheme, media type and encoding."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https", "ftp", "file"):
        raise ImageRefused(
            f"is a {scheme} URL: this server never fetches images from the network or disk; "
            "send the image inline as a data URL (data:image/png;base64,...)",
            "unsupported_image_url",
        )
    if scheme != "data":
        raise ImageRefused(
            f"is {url[:40]!r}, not a data URL: send the image inline as data:image/png;base64,...", "invalid_image_url"
        )
    header, comma, payload = url[len("data:") :].partition(",")
    if not comma:
        raise ImageRefused("is a data URL without a comma before its data: write data:image/png;base64,<data>")
    media_type, *options = [item.strip().lower() for item in header.split(";")]
    if not media_type.startswith("image/"):
        raise ImageRefused(f"has media type {media_type or 'none'!r}: send an image (data:image/png;base64,...)")
    if "base64" not in options:
        raise ImageRefused("is a data URL without ;base64: send the image base64-encoded (data:image/png;base64,...)")
    return payload


def decode_data_url(url: str, limits: ImageLimits):
    """The image in a base64 `data:` URL as an RGB PIL image; ImageRefused (message without the part's name)."""
    if not isinstance(url, str):
        raise ImageRefused(f"must be a string (a data URL), got {type(url).__name__}", "invalid_type")
    payload = "".join(_payload(url).split())  # line breaks inside base64 are allowed, not part of the data
    if len(payload) // 4 * 3 > limits.max_bytes:
        raise ImageRefused(
            f"holds about {len(payload) // 4 * 3:,} bytes of image, more than the {limits.max_bytes:,} allowed "
            "(serve.max_image_bytes): send a smaller image",
            "image_too_large",
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused("is not valid base64 after ;base64,: encode the image bytes with standard base64") from None
    return _open(raw, limits)


def _open(raw: bytes, limits: ImageLimits):
    from PIL import Image

    names = "PNG, JPEG, GIF, WEBP or BMP"
    try:
        image = Image.open(io.BytesIO(raw), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError:
        raise ImageRefused(
            f"has more pixels than Pillow decodes (its decompression-bomb limit, {2 * Image.MAX_IMAGE_PIXELS:,}): "
            "send a smaller image",
            "image_too_large",
        ) from None
    except Exception as exc:  # UnidentifiedImageError, truncated headers, ...: all mean "not an image we read"
        raise ImageRefused(f"is not a readable image ({names}): {type(exc).__name__}") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageRefused(
            f"is {width} x {height} = {width * height:,} pixels, more than the {limits.max_pixels:,} allowed "
            "(serve.max_image_pixels): send a smaller image",
            "image_too_large",
        )
    if width < 1 or height < 1:
        raise ImageRefused(f"is {width} x {height} pixels: an image needs at least one")
    try:
        image.load()  # decompress now, inside the bounds checked above (the first frame of an animation)
        return image.convert("RGB")
    except Exception as exc:  # a truncated or corrupt body behind a valid header
        raise ImageRefused(f"is not a readable image ({names}): {type(exc).__name__}: {str(exc)[:80]}") from None
