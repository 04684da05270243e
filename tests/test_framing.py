"""The server's own text framing matches what websockets would write, at every length class."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from unichatd.transport import text_frame


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_text_frame_matches_websockets(length: int) -> None:
    """text_frame(payload) is byte-for-byte websockets' unmasked final text frame."""
    payload = b"x" * length
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
