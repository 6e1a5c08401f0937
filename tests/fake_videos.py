"""A source host's answer as the video copier's tests need it: a small MP4 read in one chunk,
its size known once read (the copier's own checks of size and hash are tested elsewhere)."""
from __future__ import annotations

from collections.abc import AsyncIterator

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4


class Download:
    content_type = "video/mp4"

    def __init__(self) -> None:
        self.size = 0
        self.hexdigest = "0" * 64

    async def chunks(self) -> AsyncIterator[bytes]:
        self.size = len(VIDEO)
        yield VIDEO
