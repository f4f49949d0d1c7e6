"""The image rules: one function that ``datamodules.validate`` checks with and the pair encoder
loads with, so that an image passes validation exactly when training and evaluation can use it.

An image must be a regular file (a named pipe is refused without being opened: opening one blocks),
non-empty, decodable to the end, at most :data:`MAX_DECODED_PIXELS` pixels (decompression-bomb
guard) and at most :data:`MAX_ASPECT_RATIO` times longer than wide (the Qwen-VL image processors'
``smart_resize`` refuses anything more elongated). Images behind an fsspec URL (``s3://...``) are
read through fsspec.
"""

from __future__ import annotations

import io
import os
import stat
import zlib

from PIL import Image

from datamodules.trec import FormatError

__all__ = [
    "MAX_ASPECT_RATIO",
    "MAX_DECODED_PIXELS",
    "ImageError",
    "image_bytes_problem",
    "image_problem",
    "open_image",
    "read_image_file",
    "size_problem",
]

# Refuse images that would decompress to more than this many pixels (decompression bombs).
MAX_DECODED_PIXELS = 64_000_000
# Qwen2-VL / Qwen2.5-VL / Qwen3-VL processors raise for max(h, w) / min(h, w) > 200.
MAX_ASPECT_RATIO = 200

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError)


class ImageError(FormatError):
    """An image that cannot be used; the message names the image and what to do."""


def size_problem(width: int, height: int, name: str) -> str | None:
    """What is wrong with an image of ``width`` x ``height`` pixels, or None."""
    if width < 1 or height < 1:
        return f"image {name} has no pixels ({width}x{height})"
    if width * height > MAX_DECODED_PIXELS:
        return (
            f"image {name} is {width}x{height} pixels, over the {MAX_DECODED_PIXELS:,} pixel safety limit "
            "(decompression bomb guard); downscale it"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        return (
            f"image {name} is {width}x{height} pixels, an aspect ratio of {ratio:.0f}:1 over the "
            f"{MAX_ASPECT_RATIO}:1 the vision processor accepts; crop or pad it"
        )
    return None


def _source(path: str):
    """A path PIL can open, or a file object for a URL; raises ImageError before opening a non-file."""
    if "://" in path:
        import fsspec

        try:
            with fsspec.open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise ImageError(f"image file {path} not found") from None
        except OSError as err:
            raise ImageError(f"image {path} cannot be read ({type(err).__name__}: {err})") from None
        if not data:
            raise ImageError(f"image file {path} is empty (0 bytes)")
        return io.BytesIO(data)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"image file {path} not found") from None
    except OSError as err:
        raise ImageError(f"image {path} cannot be read ({err.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(
            f"image {path} is not a regular file (a named pipe, device or folder); point at an image file"
        )
    if info.st_size == 0:
        raise ImageError(f"image file {path} is empty (0 bytes)")
    return path


def _decode(source, name: str) -> Image.Image:
    try:
        with Image.open(source) as image:
            problem = size_problem(*image.size, name)
            if problem is not None:
                raise ImageError(problem)
            return image.convert("RGB")  # decodes every byte: a truncated file fails here
    except ImageError:
        raise
    except _DECODE_ERRORS as err:
        raise ImageError(f"image {name} cannot be decoded ({type(err).__name__}: {err})") from None


def open_image(path: str | os.PathLike) -> Image.Image:
    """The image at ``path`` decoded in full as RGB; :class:`ImageError` says why it is unusable."""
    path = os.fspath(path)
    return _decode(_source(path), path)


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of the image file at ``path`` (local), refused like :func:`open_image` refuses it
    before opening: not a regular file (a named pipe would block forever), missing, empty."""
    path = os.fspath(path)
    source = _source(path)
    if isinstance(source, io.BytesIO):  # a URL, already read
        return source.getvalue()
    try:
        with open(source, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise ImageError(f"image {path} cannot be read ({err.strerror or err})") from None


def image_bytes_problem(data: bytes, name: str) -> str | None:
    """Why image bytes (embedded in a table, or read from a file) cannot be used, or None: the rule
    of :func:`open_image` (decodes in full, pixel and aspect-ratio limits)."""
    if not data:
        return f"image {name} is empty (0 bytes)"
    try:
        _decode(io.BytesIO(data), name)
    except ImageError as err:
        return str(err)
    return None


def image_problem(path: str | os.PathLike) -> str | None:
    """Why the image at ``path`` cannot be used (the message of :func:`open_image`), or None."""
    try:
        open_image(path)
    except ImageError as err:
        return str(err)
    return None
