"""Uploaded images are told apart by their first bytes; stored names are unguessable and strict."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from floodgate import images

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "


@pytest.mark.parametrize(("head", "kind"), [(PNG, images.PNG), (JPEG, images.JPEG), (WEBP, images.WEBP)])
def test_each_kind_is_known_by_its_magic_bytes(head: bytes, kind: images.ImageKind) -> None:
    assert images.sniff(head) is kind


@pytest.mark.parametrize("head", [
    b"<html><script>alert(1)</script>", b"GIF89a\x01\x00", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"%PDF-1.7\n",
    b"", b"\xff\xd8", b"RIFF", b"\x89PNG\r\n"])
def test_anything_else_is_not_an_image(head: bytes) -> None:
    assert images.sniff(head) is None


def test_new_names_are_unguessable_and_recognised() -> None:
    names = {images.new_name(images.PNG) for _ in range(1000)}
    assert len(names) == 1000
    for name in names:
        assert images.kind_of_name(name) is images.PNG and len(name) == len("img_") + 32 + len(".png")


@pytest.mark.parametrize("name", [
    "../secret.png", "img_" + "a" * 32 + ".png/..", "img_" + "a" * 31 + ".png", "img_" + "a" * 32 + ".gif",
    "img_" + "a" * 32 + ".png.html", ".incoming-abc", "img_" + "a" * 30 + "/x.png", "IMG_" + "a" * 32 + ".png"])
def test_names_the_store_never_makes_are_refused(name: str) -> None:
    assert images.kind_of_name(name) is None


@given(st.text(max_size=60))
def test_a_recognised_name_never_leaves_the_directory(name: str) -> None:
    if images.kind_of_name(name) is not None:
        assert "/" not in name and "\\" not in name and ".." not in name and name.startswith("img_")
