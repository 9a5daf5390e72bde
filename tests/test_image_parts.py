"""Image parts in chat requests (runner.openai.protocol + runner.openai.images): what is decoded, what is a 400.

No model here: these are the checks the server and the Python API share before anything generates.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from planner.errors import ShardwiseError
from runner.api_args import checked_messages
from runner.engine.sampling import SamplingParams
from runner.openai.images import ImageLimits
from runner.openai.protocol import APIError, image_params, parse_chat_request, parse_messages, refuse_images

try:
    from tests.tiny_models import png_data_url
except ImportError:
    from tiny_models import png_data_url


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def data_url(raw: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(raw).decode("ascii")


def refused(messages, **limits) -> APIError:
    with pytest.raises(APIError) as caught:
        parse_messages(messages, images=ImageLimits(**limits))
    assert caught.value.status == 400 and "\n" not in caught.value.message
    return caught.value


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height but whose data is a few bytes: a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_an_image_part_is_decoded_in_place_and_text_parts_keep_their_order():
    (message,) = parse_messages(user({"type": "text", "text": "what is"}, image_part(png_data_url(40, 30))))
    text, image = message["content"]
    assert text == {"type": "text", "text": "what is"}
    assert image["type"] == "image" and image["image"].size == (40, 30) and image["image"].mode == "RGB"
    assert image_params([message]) == ["messages[0].content[1]"]


def test_text_only_parts_still_become_one_string():
    (message,) = parse_messages(user({"type": "text", "text": "a"}, {"type": "text", "text": "b"}))
    assert message["content"] == "ab"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_common_formats_decode_to_rgb(fmt):
    buffer = io.BytesIO()
    Image.new("L" if fmt == "GIF" else "RGB", (8, 6), 120).save(buffer, format=fmt)
    (message,) = parse_messages(user(image_part(data_url(buffer.getvalue(), f"image/{fmt.lower()}"))))
    assert message["content"][0]["image"].size == (8, 6) and message["content"][0]["image"].mode == "RGB"


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "http://127.0.0.1:9/x.png", "file:///etc/passwd"])
def test_a_url_that_would_need_fetching_is_refused_naming_the_part(url):
    error = refused(user({"type": "text", "text": "look"}, image_part(url)))
    assert error.param == "messages[0].content[1].image_url" and error.code == "unsupported_image_url"
    assert "never fetches" in error.message and "data:image/png;base64" in error.message


@pytest.mark.parametrize(
    "url,fragment",
    [
        ("data:image/png;base64,!!!not-base64!!!", "not valid base64"),
        (data_url(b"hello, this is no image"), "not a readable image"),
        (data_url(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "not a readable image"),
        (data_url(b"GIF89a"), "not a readable image"),
        ("data:text/plain;base64,aGVsbG8=", "media type 'text/plain'"),
        ("data:image/png,rawbytes", "without ;base64"),
        ("data:image/png;base64", "without a comma"),
        ("cat.png", "not a data URL"),
    ],
)
def test_malformed_image_data_is_a_400_naming_the_part(url, fragment):
    error = refused(user(image_part(url)))
    assert error.param == "messages[0].content[0].image_url"
    assert fragment in error.message, error.message


def test_eps_and_other_formats_that_run_programs_are_not_opened():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    error = refused(user(image_part(data_url(eps, "image/eps"))))
    assert "not a readable image (PNG, JPEG, GIF, WEBP or BMP)" in error.message


def test_an_image_larger_than_max_bytes_is_refused_before_decoding():
    error = refused(user(image_part(png_data_url(40, 30))), max_bytes=64)
    assert error.code == "image_too_large" and "more than the 64 allowed" in error.message
    assert error.param == "messages[0].content[0].image_url"


def test_pixels_are_checked_from_the_header_before_decompressing():
    # 8000 x 5000 = 40 megapixels (above the 33.2 MP default) in a file of ~100 bytes
    error = refused(user(image_part(data_url(png_claiming(8000, 5000)))))
    assert error.code == "image_too_large" and "8000 x 5000 = 40,000,000 pixels" in error.message
    # past Pillow's own decompression-bomb limit it is the same clear 400
    error = refused(user(image_part(data_url(png_claiming(30000, 30000)))), max_pixels=10**12)
    assert error.code == "image_too_large"
    assert refused(user(image_part(png_data_url(40, 30))), max_pixels=1000).code == "image_too_large"


def test_too_many_images_names_the_first_one_over():
    url = png_data_url(4, 4)
    error = refused([*user(image_part(url)), *user({"type": "text", "text": "and"}, image_part(url))], max_images=1)
    assert error.param == "messages[1].content[1]" and error.code == "too_many_images"


def test_images_only_in_user_messages_and_only_known_part_types():
    url = png_data_url(4, 4)
    error = refused([{"role": "system", "content": [image_part(url)]}])
    assert error.param == "messages[0].content[0]" and "only user messages" in error.message
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    assert refused(user(audio)).param == "messages[0].content[0]"
    assert refused(user({"type": "image_url", "image_url": "data:..."})).param == "messages[0].content[0].image_url"
    bad_detail = {"type": "image_url", "image_url": {"url": url, "detail": "ultra"}}
    assert refused(user(bad_detail)).param == "messages[0].content[0].image_url.detail"


def test_a_model_without_images_refuses_the_first_image_part_by_name():
    messages = parse_messages([{"role": "user", "content": "hi"}, *user({"type": "text", "text": "x"})])
    refuse_images(messages, "tiny-llama")  # text only: nothing to refuse
    messages = parse_messages(user({"type": "text", "text": "see"}, image_part(png_data_url(4, 4))))
    with pytest.raises(APIError) as caught:
        refuse_images(messages, "tiny-llama")
    assert caught.value.param == "messages[0].content[1]" and caught.value.code == "images_not_supported"
    assert "tiny-llama cannot take images" in caught.value.message


def test_parse_chat_request_uses_the_servers_image_limits():
    body = {"model": "m", "messages": user(image_part(png_data_url(40, 30)))}
    assert parse_chat_request(body, SamplingParams()).messages[0]["content"][0]["image"].size == (40, 30)
    with pytest.raises(APIError) as caught:
        parse_chat_request(body, SamplingParams(), images=ImageLimits(max_images=0))
    assert caught.value.code == "too_many_images"


def test_python_api_checks_parts_the_same_way_in_one_line():
    with pytest.raises(ShardwiseError) as caught:
        checked_messages(user(image_part("https://example.com/x.png")))
    assert str(caught.value).startswith("messages[0].content[0].image_url.url is a https URL")
    checked = checked_messages(user(image_part(png_data_url(4, 4))))
    assert checked_messages(checked) is checked  # decoded once, not parsed again
