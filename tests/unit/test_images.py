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


def test_an_image_expires_only_once_past_its_time_to_live() -> None:
    assert not images.expired(1000.0, 1000.0 + 60, ttl=60)  # at the boundary: still served
    assert images.expired(1000.0, 1000.0 + 60.5, ttl=60)
    assert not images.expired(1000.0, 990.0, ttl=60)  # written "after now" (clock skew): kept


def test_a_sweep_deletes_the_expired_and_counts_the_rest() -> None:
    entries = [("old", 100.0, 10), ("new", 950.0, 20), ("edge", 940.0, 40), ("older", 0.0, 1000)]
    doomed, kept = images.sort_out(entries, now=1000.0, ttl=60)
    assert doomed == ["old", "older"] and kept == 60
    assert images.sort_out([], now=1000.0, ttl=60) == ([], 0)


@given(st.lists(st.tuples(st.floats(0, 2000), st.integers(0, 1 << 20)), max_size=30), st.floats(1, 1000))
def test_a_sweep_sorts_every_entry_one_way_or_the_other(ages: list[tuple[float, int]], ttl: float) -> None:
    entries = [(i, modified, size) for i, (modified, size) in enumerate(ages)]
    doomed, kept = images.sort_out(entries, now=2000.0, ttl=ttl)
    assert set(doomed) == {i for i, modified, _ in entries if 2000.0 - modified > ttl}
    assert kept == sum(size for i, _, size in entries if i not in doomed)
