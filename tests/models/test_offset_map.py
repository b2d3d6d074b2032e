"""The offset range map (models/offset_map.py): compact runs, exact translation, bounded thinning."""

from __future__ import annotations

import random

import pytest

from models.offset_map import RangeMap, Run, runs_of_batch


def brute_force(pairs: list[tuple[int, int]], source_offset: int) -> int | None:
    """Target offset of the first copied source record at or after ``source_offset``."""
    later = [t for s, t in pairs if s >= source_offset]
    return min(later) if later else None


def test_contiguous_batches_merge_into_one_exact_run() -> None:
    m = RangeMap()
    m.add_batch([0, 1, 2, 3], 10)
    m.add_batch([4, 5], 14)
    assert m.runs == [Run(0, 6, 10, 16)]
    assert m.translate(3) is not None
    t = m.translate(3)
    assert t is not None and (t.offset, t.max_reread, t.covered) == (13, 0, True)


def test_source_gaps_start_new_runs_and_translate_exactly() -> None:
    # A transaction marker at 3, aborted records 7..9: copied offsets 0,1,2,4,5,6,10,11.
    offsets = [0, 1, 2, 4, 5, 6, 10, 11]
    assert runs_of_batch(offsets, 100) == [Run(0, 3, 100, 103), Run(4, 7, 103, 106), Run(10, 12, 106, 108)]
    m = RangeMap()
    m.add_batch(offsets, 100)
    pairs = [(s, 100 + i) for i, s in enumerate(offsets)]
    for s in range(0, 12):
        t = m.translate(s)
        assert t is not None
        assert t.offset == brute_force(pairs, s), s
        assert t.max_reread == 0, s
    past = m.translate(12)
    assert past is not None and (past.offset, past.covered) == (108, False)


def test_random_gaps_match_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(50):
        m = RangeMap()
        pairs: list[tuple[int, int]] = []
        source = target = 0
        for _batch in range(rng.randint(1, 20)):
            offsets = []
            for _ in range(rng.randint(1, 30)):
                source += rng.choice([1, 1, 1, 2, 5])
                offsets.append(source)
            m.add_batch(offsets, target)
            pairs += [(s, target + i) for i, s in enumerate(offsets)]
            target += len(offsets)
        for s in range(0, source + 1):
            t = m.translate(s)
            assert t is not None
            assert t.offset == brute_force(pairs, s) and t.max_reread == 0


def test_gap_between_target_runs_is_an_explicit_bound() -> None:
    m = RangeMap()
    m.add_batch([0, 1, 2], 0)
    m.add_batch([3, 4], 10)  # target 3..9 written by someone else (or copies the map missed)
    t = m.translate(3)
    assert t is not None and (t.offset, t.max_reread) == (10, 0)
    m2 = RangeMap([Run(0, 3, 0, 3), Run(5, 7, 10, 12)])
    t2 = m2.translate(4)
    assert t2 is not None and (t2.offset, t2.max_reread) == (3, 7)


def test_recopy_after_crash_replaces_the_older_mapping() -> None:
    m = RangeMap()
    m.add_batch(list(range(0, 10)), 0)
    m.add_batch(list(range(6, 12)), 10)  # progress said 6: 6..9 copied again at 10..13
    assert m.runs == [Run(0, 6, 0, 6), Run(6, 12, 10, 16)]
    t = m.translate(7)
    assert t is not None and (t.offset, t.max_reread) == (11, 0)


def test_thinning_merges_gapless_neighbours_without_error_and_bounds_the_rest() -> None:
    m = RangeMap([Run(0, 5, 0, 5), Run(5, 10, 5, 10), Run(12, 20, 10, 18), Run(30, 40, 18, 28)])
    # The first two already merged on insert (exact and adjacent).
    assert len(m) == 3
    m.thin(2)
    assert len(m) == 2
    merged = m.runs[0]
    assert merged == Run(0, 20, 0, 18)
    assert m.max_error() == 2
    pairs = [(s, s) for s in range(10)] + [(s, s - 2) for s in range(12, 20)] + [(s, s - 12) for s in range(30, 40)]
    for s in range(0, 41):
        t = m.translate(s)
        assert t is not None
        truth = brute_force(pairs, s)
        if truth is None:
            assert t.offset == 28
            continue
        assert t.offset <= truth <= t.offset + t.max_reread, s
        assert t.max_reread <= 2


def test_thinning_never_merges_across_target_gaps() -> None:
    m = RangeMap([Run(0, 5, 0, 5), Run(6, 8, 9, 11)])
    m.thin(1)
    assert len(m) == 2


def test_translate_back_finds_the_source_offset_of_a_target_record() -> None:
    m = RangeMap()
    m.add_batch([0, 1, 2, 4, 5, 6, 10, 11], 100)
    assert m.translate_back(100) == 0
    assert m.translate_back(103) == 4
    assert m.translate_back(106) == 10
    assert m.translate_back(50) == 0
    assert m.translate_back(108) == 12
    assert m.translate_back(108, next_source=15) == 15
    assert RangeMap().translate_back(3) is None
    assert RangeMap().translate_back(3, next_source=9) == 9


def test_empty_map() -> None:
    assert RangeMap().translate(5) is None
    t = RangeMap().translate(5, next_target=42)
    assert t is not None and (t.offset, t.covered) == (42, False)


def test_invalid_runs_refused() -> None:
    with pytest.raises(ValueError, match="more target"):
        Run(0, 2, 0, 3)
    with pytest.raises(ValueError, match="increase"):
        runs_of_batch([3, 3], 0)


def test_copies_lost_before_the_first_stored_run_are_bounded_by_the_origin() -> None:
    # Copying began at source 0 / target 0; a crash lost the runs of source 0..99 (target 0..99); the next owner
    # re-copied from its progress, source 60, to target 100 onwards.
    m = RangeMap([Run(60, 200, 100, 240)])
    t = m.translate(10, origin=(0, 0))
    assert t is not None and (t.offset, t.max_reread) == (0, 100)
    # Without a lost range (origin right at the first run) the answer stays exact.
    exact = RangeMap([Run(5, 10, 0, 5)]).translate(2, origin=(0, 0))
    assert exact is not None and (exact.offset, exact.max_reread) == (0, 0)
    # Offsets before the origin were never copied: resume at the first copy.
    before = RangeMap([Run(50, 60, 7, 17)]).translate(3, origin=(40, 7))
    assert before is not None and (before.offset, before.max_reread) == (7, 0)
