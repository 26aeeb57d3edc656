"""Piano roll → Standard MIDI File → piano roll round trips."""

import numpy as np
import pytest

from dgm.data import midi


def _roll(seed=0, steps=40):
    rng = np.random.default_rng(seed)
    roll = (rng.random((steps, 88)) < 0.08).astype(np.uint8)
    roll[5:9, 40] = 1  # a held note across frames
    roll[-1, 0] = roll[-1, 87] = 1  # notes at both range ends, sounding at the end
    return roll


def test_round_trip_is_exact(tmp_path):
    roll = _roll()
    path = tmp_path / "sample.mid"
    midi.write_piano_roll(path, roll)
    np.testing.assert_array_equal(midi.read_piano_roll(path), roll)


def test_bytes_are_a_standard_midi_file():
    data = midi.piano_roll_to_midi(np.zeros((4, 88)))
    assert data[:4] == b"MThd" and data[8:10] == b"\x00\x00"  # format 0
    assert data[14:18] == b"MTrk" and data.endswith(b"\xff\x2f\x00")
    assert midi._varlen(0) == b"\x00" and midi._varlen(0x80) == b"\x81\x00"
    assert midi._varlen(0x0FFFFFFF) == b"\xff\xff\xff\x7f"


def test_mido_reads_it(tmp_path):
    mido = pytest.importorskip("mido")
    roll = _roll(1)
    path = tmp_path / "sample.mid"
    midi.write_piano_roll(path, roll, ticks_per_frame=120)
    f = mido.MidiFile(path)
    ons = [m for m in f.tracks[0] if m.type == "note_on" and m.velocity > 0]
    assert len(ons) == int(np.sum(np.diff(np.vstack([np.zeros((1, 88)), roll]), axis=0) > 0))
    assert {m.note for m in ons} <= set(range(21, 109))
    assert sum(m.time for m in f.tracks[0]) == roll.shape[0] * 120


def test_bad_rolls_are_refused():
    with pytest.raises(ValueError, match="shape"):
        midi.piano_roll_to_midi(np.zeros((4, 87)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        midi.piano_roll_to_midi(np.full((4, 88), 0.5))
