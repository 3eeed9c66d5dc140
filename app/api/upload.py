"""Reading the uploaded image: multipart ``image`` field or raw body, size-capped.

The cap holds with or without Content-Length: a declared length over the limit is
refused before reading, and the body is counted while it streams (chunked uploads),
so no more than ``limit`` bytes (plus one chunk) are ever held.
"""

from collections.abc import AsyncGenerator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.api.errors import EmptyBodyError, MissingImageError, PayloadTooLargeError

IMAGE_FIELD = "image"


async def read_image_bytes(request: Request, limit: int) -> bytes:
    """The image bytes of a /segment request (format not yet checked).

    Raises:
        PayloadTooLargeError: more than ``limit`` bytes, declared or streamed.
        MissingImageError: a multipart body without an ``image`` file field.
        EmptyBodyError: no bytes.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"body of {declared} bytes; the limit is {limit}")
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        data = await _read_multipart(request, limit)
    else:
        # Everything else is taken as raw image bytes: the format is sniffed from the
        # bytes, never trusted from the header.
        data = b"".join([chunk async for chunk in _capped(request, limit)])
    if not data:
        raise EmptyBodyError()
    return data


async def _capped(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLargeError(f"body over the limit of {limit} bytes")
        yield chunk


async def _read_multipart(request: Request, limit: int) -> bytes:
    parser = MultiPartParser(request.headers, _capped(request, limit), max_files=8,
                             max_fields=32, max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise MissingImageError(f"malformed multipart body: {e.message}") from None
    except PayloadTooLargeError:
        raise
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise MissingImageError(f"malformed multipart body: {type(e).__name__}") from None
    try:
        upload = form.get(IMAGE_FIELD)
        if not isinstance(upload, UploadFile):
            raise MissingImageError(
                f"multipart body without an '{IMAGE_FIELD}' file field"
                + (f" (fields: {', '.join(sorted(set(form.keys())))})" if len(form) else ""))
        return await upload.read()
    finally:
        await form.close()
