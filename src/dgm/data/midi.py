"""Piano rolls to and from Standard MIDI Files (format 0), without a MIDI library.

A roll is a (time, 88) 0/1 array whose column k is MIDI pitch 21 + k (the polyphonic
datasets' layout). Each frame lasts ``ticks_per_frame`` ticks; a note sounds from the first
frame of a run of ones to the frame after its last one. :func:`read_piano_roll` parses only
what :func:`write_piano_roll` writes (plus running status), enough to check a round trip.
"""

import os
import struct

import numpy as np

LOWEST_PITCH = 21
_NUM_PITCHES = 88
_TICKS_PER_BEAT = 480


def _varlen(value: int) -> bytes:
    """MIDI variable-length quantity: 7 bits per byte, high bit set on all but the last."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _events(roll: np.ndarray) -> list[tuple[int, int, int]]:
    """(frame, status, pitch) note-on/off events, offs before ons within a frame."""
    padded = np.concatenate([np.zeros((1, roll.shape[1])), roll, np.zeros((1, roll.shape[1]))])
    change = np.diff(padded, axis=0)
    events = []
    for status, where in ((0x80, change < 0), (0x90, change > 0)):
        frames, keys = np.nonzero(where)
        pitches = keys + LOWEST_PITCH
        events += [(int(t), status, int(p)) for t, p in zip(frames, pitches, strict=True)]
    return sorted(events)


def piano_roll_to_midi(
    roll, ticks_per_frame: int = 240, tempo_us_per_beat: int = 500_000, velocity: int = 80
) -> bytes:
    """The bytes of a format-0 Standard MIDI File playing ``roll`` on channel 0.

    Raises:
        ValueError: ``roll`` is not a (time, 88) array of zeros and ones, or an argument is
            out of range.
    """
    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[1] != _NUM_PITCHES:
        raise ValueError(f"`roll` must have shape (time, {_NUM_PITCHES}); got {roll.shape}")
    if not np.all((roll == 0) | (roll == 1)):
        raise ValueError("`roll` must contain only 0 and 1 (threshold probabilities first)")
    if not 1 <= velocity <= 127 or ticks_per_frame < 1 or not 0 < tempo_us_per_beat < 1 << 24:
        raise ValueError("`velocity` must be in 1..127, `ticks_per_frame` >= 1, tempo < 2^24")
    track = bytearray(b"\x00\xff\x51\x03" + tempo_us_per_beat.to_bytes(3, "big"))
    last = 0
    for frame, status, pitch in _events(roll):
        tick = frame * ticks_per_frame
        vel = velocity if status == 0x90 else 0
        track += _varlen(tick - last) + bytes([status, pitch, vel])
        last = tick
    track += _varlen(roll.shape[0] * ticks_per_frame - last) + b"\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, _TICKS_PER_BEAT)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def write_piano_roll(path: str | os.PathLike, roll, **kwargs) -> None:
    """Write ``roll`` to ``path`` as a ``.mid`` file (see :func:`piano_roll_to_midi`)."""
    with open(path, "wb") as f:
        f.write(piano_roll_to_midi(roll, **kwargs))


def _read_varlen(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    while True:
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, pos


def read_piano_roll(path: str | os.PathLike, ticks_per_frame: int = 240) -> np.ndarray:
    """Parse a file written by :func:`write_piano_roll` back into a (time, 88) uint8 roll.

    Raises:
        ValueError: not a format-0 MIDI file, or an event this reader does not handle.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"MThd" or data[14:18] != b"MTrk":
        raise ValueError(f"{path} is not a single-track Standard MIDI File")
    end = 22 + struct.unpack(">I", data[18:22])[0]
    pos, tick, status, notes = 22, 0, 0, []
    on: dict[int, int] = {}
    while pos < end:
        delta, pos = _read_varlen(data, pos)
        tick += delta
        if data[pos] == 0xFF:  # meta event: type, length, payload
            length, pos = _read_varlen(data, pos + 2)
            pos += length
            continue
        if data[pos] & 0x80:
            status, pos = data[pos], pos + 1
        pitch, vel = data[pos], data[pos + 1]
        pos += 2
        if status & 0xF0 == 0x90 and vel > 0:
            on[pitch] = tick
        elif status & 0xF0 in (0x80, 0x90):
            notes.append((pitch, on.pop(pitch), tick))
        else:
            raise ValueError(f"unexpected MIDI status byte {status:#x}")
    roll = np.zeros((tick // ticks_per_frame, _NUM_PITCHES), np.uint8)
    for pitch, start, stop in notes:
        roll[start // ticks_per_frame : stop // ticks_per_frame, pitch - LOWEST_PITCH] = 1
    return roll
