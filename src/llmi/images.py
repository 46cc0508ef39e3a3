"""Image values: bytes plus what Pillow says about them, and the one loader of the user's images.

:class:`ImageData` is pure apart from decoding in memory; :func:`load_image` / :func:`load_images` read a
user's image from wherever it comes (a path, bytes, a data URI, a PIL image) with one set of checks and
messages, for the CLI, generation, the reward and the server alike."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

from .errors import ToolError

#: Magic numbers of the formats llmi accepts, checked before Pillow sees the bytes.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"RIFF", "image/webp"),  # confirmed below ("WEBP" at offset 8)
    (b"BM", "image/bmp"),
)

#: Default ceiling on decoded pixels; above it an image is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 64_000_000
#: Default ceiling on the size of an image file read from disk.
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024


#: The Pillow decoders llmi lets near untrusted bytes (the formats of ``_MAGIC``).
_PIL_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")


def sniff_mime(data: bytes) -> str | None:
    """Return the MIME type implied by the magic bytes, or None if it is not a known image format."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            if mime == "image/webp" and data[8:12] != b"WEBP":
                return None
            return mime
    return None


#: File extension for each image type (anything else is written as ``.bin`` — not expected in practice).
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp", "image/bmp": "bmp"}


def file_extension(mime: str | None) -> str:
    """The file extension (without the dot) for an image type: ``png``, ``jpg``, ...; ``bin`` for others."""
    return EXTENSIONS.get((mime or "").lower(), "bin")


@dataclass(frozen=True)
class ImageData:
    """An encoded image with its verified type and size."""

    data: bytes
    mime: str
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_size: tuple[int, int] | None = None,
        max_size: tuple[int, int] | None = None,
    ) -> "ImageData":
        """Validate ``data`` as an image: magic bytes, a full decode, pixel and size bounds.

        Raises :class:`ToolError` with kind ``invalid_image`` / ``image_too_large`` /
        ``image_too_small`` — a backend lets it propagate and the engine records the reason.
        """
        from PIL import Image, UnidentifiedImageError

        mime = sniff_mime(data)
        if mime is None:
            head = data[:40].decode("latin-1", "replace").strip()
            raise ToolError(f"not an image (starts with {head!r})", kind="invalid_image")
        try:
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
                width, height = im.size
                if width * height > max_pixels:
                    raise ToolError(
                        f"image is {width}x{height} pixels, above the {max_pixels} pixel limit "
                        "(possible decompression bomb)",
                        kind="image_too_large",
                    )
                im.load()  # full decode: catches truncated files
                if _orientation(im) in _SIDEWAYS:  # shown rotated by a quarter turn: report the upright size
                    width, height = height, width
        except ToolError:
            raise
        except Image.DecompressionBombError as exc:
            raise ToolError(f"image is too large to decode safely: {exc}", kind="image_too_large") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ToolError(f"image does not decode: {exc}", kind="invalid_image") from exc
        if min_size and (width < min_size[0] or height < min_size[1]):
            raise ToolError(
                f"image is {width}x{height}, below the minimum {min_size[0]}x{min_size[1]}",
                kind="image_too_small",
            )
        if max_size and (width > max_size[0] or height > max_size[1]):
            raise ToolError(
                f"image is {width}x{height}, above the maximum {max_size[0]}x{max_size[1]}",
                kind="image_too_large",
            )
        return cls(data=data, mime=mime, width=width, height=height)

    @classmethod
    def from_file(cls, path, *, max_bytes: int = DEFAULT_MAX_FILE_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS) -> "ImageData":
        """Read and validate an image file. Only regular files up to ``max_bytes`` are read, so a path
        such as ``/dev/zero`` or a FIFO fails at once instead of exhausting memory or hanging.

        Raises ``OSError`` when the file cannot be read and :class:`ToolError` when it is no usable image.
        """
        import os
        import stat

        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ToolError(f"{path} is not a regular file", kind="invalid_image")
            if st.st_size > max_bytes:
                raise ToolError(f"{path} is {st.st_size} bytes, above the {max_bytes} byte limit", kind="image_too_large")
            with os.fdopen(fd, "rb", closefd=True) as f:
                fd = -1
                data = f.read(max_bytes + 1)
        finally:
            if fd >= 0:
                os.close(fd)
        if len(data) > max_bytes:
            raise ToolError(f"{path} is above the {max_bytes} byte limit", kind="image_too_large")
        return cls.from_bytes(data, max_pixels=max_pixels)

    @classmethod
    def from_pil(cls, image, format: str = "PNG") -> "ImageData":
        """Encode a PIL image (e.g. a diffusers output)."""
        buf = io.BytesIO()
        image.save(buf, format=format)
        mime = "image/png" if format.upper() == "PNG" else f"image/{format.lower()}"
        return cls(data=buf.getvalue(), mime=mime, width=image.width, height=image.height)

    def to_pil(self):
        """The decoded image, upright: an EXIF orientation (phone photos are stored sideways) is applied,
        so the pixels match :attr:`width`/:attr:`height` and what a browser shows."""
        from PIL import Image, ImageOps

        im = Image.open(io.BytesIO(self.data))
        im.load()
        if _orientation(im) in range(2, 9):
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # noqa: BLE001 - a malformed EXIF block leaves the image as stored
                pass
        return im


#: EXIF orientations that turn the image by a quarter turn (width and height swap on display).
_SIDEWAYS = (5, 6, 7, 8)


def _orientation(im) -> int:
    """The EXIF Orientation tag (1 = as stored), 1 when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF must not make a valid image unusable
        return 1
    return value if isinstance(value, int) else 1


# ------------------------------------------------------------------------------------------------
# The user's images: one loader for the CLI, generation, the reward and the server
# ------------------------------------------------------------------------------------------------

IMAGE_TYPES = "PNG, JPEG, GIF, WEBP or BMP"


def load_image(
    ref,
    *,
    base_dir=None,
    max_pixels: int | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    label: str | None = None,
) -> ImageData:
    """A user image from an :class:`ImageData`, raw bytes, a file path (``str`` or path-like, relative
    paths resolved against ``base_dir``), a ``data:`` URI, a PIL image or a ``{"bytes"|"path"}`` entry
    (an image column of a Hugging Face / parquet row).

    Raises :class:`~llmi.errors.InputError` with a one-line reason that names the image (``label``, else
    the path or "image"): a missing file, a folder, a device, a file above ``max_bytes``, an empty file, a
    format other than PNG/JPEG/GIF/WEBP/BMP, or bytes that do not decode within ``max_pixels``. A pipe
    (``-i <(...)``) is read like a file.
    """
    import base64
    import os
    from pathlib import Path

    from .errors import InputError
    from .files import read_capped

    if isinstance(ref, ImageData):
        return ref
    if isinstance(ref, dict):
        if ref.get("bytes"):
            ref = bytes(ref["bytes"])
        elif ref.get("path"):
            ref = Path(ref["path"])
        else:
            raise InputError("an image entry has neither bytes nor a path")
    kw = {"max_pixels": max_pixels} if max_pixels else {}
    name = label
    try:
        if isinstance(ref, (bytes, bytearray, memoryview)):
            name = name or "(bytes)"
            data = bytes(ref)
        elif isinstance(ref, str) and ref.startswith("data:"):
            name = name or "data URI image"
            header, _, payload = ref.partition(",")
            if ";base64" not in header:
                raise InputError("a data URI image must be base64-encoded")
            try:
                data = base64.b64decode(payload, validate=True)
            except ValueError as exc:
                raise InputError(f"bad base64 in data URI: {exc}") from None
        elif isinstance(ref, (str, os.PathLike)):
            path = os.fspath(ref)
            name = name or path
            full = os.path.expanduser(path)
            if base_dir is not None and not os.path.isabs(full):
                full = os.path.join(os.fspath(base_dir), full)
            data = read_capped(full, f"input image {name}", max_bytes)
        elif hasattr(ref, "save") and hasattr(ref, "width"):  # a PIL image (TRL vision datasets)
            return ImageData.from_pil(ref)
        else:
            raise InputError(f"an input image must be a path, a data URI or image bytes, not {type(ref).__name__}")
        if not data:
            raise InputError(f"input image {name} is empty")
        if sniff_mime(data) is None:
            raise InputError(f"input image {name} is not a {IMAGE_TYPES} image")
        return ImageData.from_bytes(data, **kw)
    except ToolError as exc:
        reason = " ".join(str(exc).split())
        raise InputError(f"input image {name or 'image'} is not usable: {reason}") from None


def load_images(items, *, base_dir=None, max_pixels: int | None = None) -> list[ImageData]:
    """:func:`load_image` for each item, in order (the user's images 0, 1, ...)."""
    return [
        load_image(item, base_dir=base_dir, max_pixels=max_pixels,
                   label=None if isinstance(item, (str, os.PathLike)) and not str(item).startswith("data:") else str(i))
        for i, item in enumerate(items or ())
    ]
