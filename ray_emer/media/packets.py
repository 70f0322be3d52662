"""Packet-level decoding as a player does it: a packet the decoder rejects is skipped and counted.

ffmpeg (and every player built on it) logs a damaged packet and goes on with the next one;
``container.decode(stream)`` instead ends at the first error, which lost whole clips for
one bad audio packet. :func:`decode_packets` feeds the decoder one packet at a time, skips
the ones it rejects and counts them in a :class:`DecodeStats`; :func:`check_decoded_share`
turns "too little of this stream decoded" into a ``MediaError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import av

from ray_emer.media.errors import MediaError

MIN_DECODED_SHARE = 0.5  # default of MediaConfig.min_decoded_share: less of a stream decoding fails the clip


@dataclasses.dataclass
class DecodeStats:
    """What happened to one stream's packets."""

    packets: int = 0  # packets with a payload the demuxer returned
    skipped: int = 0  # packets the decoder rejected (skipped; the ones after them still decode)
    stopped: str = ""  # the demuxer's error when it gave up before the end of the file ("" otherwise)

    @property
    def decoded(self) -> int:
        return max(self.packets - self.skipped, 0)

    @property
    def share(self) -> float:
        """Decoded packets / packets read (1.0 for a stream without packets)."""
        return self.decoded / self.packets if self.packets else 1.0

    def describe(self, kind: str) -> str:
        text = f"{self.decoded} of {self.packets} {kind} packets decoded ({self.share:.0%}), {self.skipped} skipped"
        return f"{text}; reading stopped early: {self.stopped}" if self.stopped else text


def decode_packets(container: av.container.InputContainer, stream: av.stream.Stream,
                   stats: DecodeStats) -> Iterator[av.frame.Frame]:
    """The decoded frames of ``stream``, skipping (and counting in ``stats``) packets the decoder rejects.

    A demuxer error ends the stream where it happened, like a player at a read error; what
    was decoded before it is kept and ``stats.stopped`` says why.
    """
    demux = container.demux(stream)
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            stats.stopped = str(exc)
            return
        if packet.size:
            stats.packets += 1
        try:
            frames = packet.decode()  # an empty packet flushes the decoder's delayed frames
        except av.error.FFmpegError:
            stats.skipped += 1
            continue
        yield from frames


def damage_reason(stats: DecodeStats) -> str:
    """``damaged`` when the decoder rejected packets, ``truncated`` when there was nothing to decode."""
    return "damaged" if stats.skipped else "truncated"


def check_decoded_share(path: str, kind: str, stats: DecodeStats, min_share: float) -> None:
    """Raise ``MediaError`` (``damaged``) when less than ``min_share`` of the stream's packets decoded."""
    if stats.packets and stats.share < min_share:
        raise MediaError(path, "damaged", f"{stats.describe(kind)}; media.min_decoded_share is {min_share:g}")
