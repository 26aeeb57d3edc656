"""CLI helpers: which saved runs a --resume may continue."""

from dgm.cli import _same_run

PRESET = {"seed_field": 1, "train": {"lr": 0.1, "ema": None}}


def test_resume_matches_identical_config():
    assert _same_run(PRESET, PRESET, PRESET)


def test_field_added_since_the_run_matches_at_its_preset_value():
    saved = {"seed_field": 1, "train": {"lr": 0.1}}  # written before `ema` existed
    assert _same_run(saved, PRESET, PRESET)
    changed = {"seed_field": 1, "train": {"lr": 0.1, "ema": 0.999}}
    assert not _same_run(saved, changed, PRESET)


def test_changed_or_removed_fields_do_not_match():
    assert not _same_run(PRESET, {"seed_field": 2, "train": PRESET["train"]}, PRESET)
    assert not _same_run({**PRESET, "gone": 3}, PRESET, PRESET)
