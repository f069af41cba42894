import pytest

from hbdnet.pyramid import PlanWindow, level_size, plan_pyramid, pyramid_levels, window_starts


@pytest.mark.parametrize(
    "side, per_level",
    [
        # method doc section 3.2: patch counts of the authors' rule for square scenes
        (2048, {0: 9, 1: 1}),
        (4096, {0: 25, 1: 9, 2: 1}),
        (8192, {0: 100, 1: 25, 2: 9, 3: 1}),
        (16384, {0: 400, 1: 100, 2: 25, 3: 9, 4: 1}),
    ],
)
def test_square_counts_match_authors(side, per_level):
    plan = plan_pyramid(side, side)
    counts = {}
    for w in plan:
        counts[w.level] = counts.get(w.level, 0) + 1
    assert counts == per_level


def test_non_square_scene_uses_both_axes():
    levels = pyramid_levels(3000, 5000)
    assert [(lv.height, lv.width) for lv in levels] == [(3000, 5000), (1500, 2500), (750, 1250), (375, 625)]
    plan = plan_pyramid(3000, 5000)
    level0 = [w for w in plan if w.level == 0]
    assert len(level0) == len(window_starts(3000)) * len(window_starts(5000)) == 4 * 6
    # every window lies inside its level and covers the level completely
    for lv in levels:
        wins = [w for w in plan if w.level == lv.index]
        assert all(w.col_off + w.width <= lv.width and w.row_off + w.height <= lv.height for w in wins)
        xs = sorted({(w.col_off, w.col_off + w.width) for w in wins})
        ys = sorted({(w.row_off, w.row_off + w.height) for w in wins})
        for spans, side in ((xs, lv.width), (ys, lv.height)):
            assert spans[0][0] == 0 and spans[-1][1] == side
            assert all(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # consecutive windows overlap
    # the top level fits one window, smaller than 1024: the window shrinks to the level
    top = [w for w in plan if w.level == 3]
    assert top == [PlanWindow(3, 8, 0, 0, 625, 375)]


def test_window_starts_overlap_and_clamp():
    starts = window_starts(3000)
    assert starts == [0, 824, 1648, 1976]
    assert all(b - a <= 824 for a, b in zip(starts, starts[1:]))
    assert window_starts(1024) == [0] and window_starts(500) == [0]


def test_small_scene_one_window_and_scene_bounds():
    plan = plan_pyramid(600, 900)
    assert plan == [PlanWindow(0, 1, 0, 0, 900, 600)]
    w = PlanWindow(2, 4, 100, 50, 1024, 1024)
    assert w.scene_bounds() == (400, 200, 4496, 4296)


def test_level_sizes_floor_like_interpolate():
    import torch
    import torch.nn.functional as F

    x = torch.zeros(1, 1, 1001, 777)
    for s in (2, 4, 8):
        y = F.interpolate(x, scale_factor=1 / s, mode="bilinear", align_corners=False)
        assert y.shape[-2:] == (level_size(1001, s), level_size(777, s))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        plan_pyramid(0, 100)
    with pytest.raises(ValueError):
        plan_pyramid(100, 100, window=512, overlap=512)


def test_context_crops_centre_clamp_and_footprint():
    from hbdnet.pyramid import context_crops

    win = PlanWindow(0, 1, 4120, 2472, 1024, 1024)  # somewhere inside a 16384 scene
    crops = context_crops(win, 16384, 16384, count=2)
    assert [c.window.level for c in crops] == [1, 2]
    for r, crop in enumerate(crops, start=1):
        d = 2**r
        l, t, rgt, b = crop.rel_box
        # the footprint is 1/d of the crop and lies inside it
        assert abs((rgt - l) - 1 / d) < 1e-9 and abs((b - t) - 1 / d) < 1e-9
        assert 0 <= l and rgt <= 1 and 0 <= t and b <= 1
        # mapped back to scene pixels, the footprint is the window
        sx0 = (crop.window.col_off + l * 1024) * crop.window.scale
        sy0 = (crop.window.row_off + t * 1024) * crop.window.scale
        assert abs(sx0 - 4120) < 1e-6 and abs(sy0 - 2472) < 1e-6
    # a corner window: the crop is pushed inside the level
    corner = context_crops(PlanWindow(0, 1, 0, 0, 1024, 1024), 16384, 16384, count=1)[0]
    assert (corner.window.col_off, corner.window.row_off) == (0, 0)
    assert corner.rel_box == (0.0, 0.0, 0.5, 0.5)
    # a level smaller than the crop: the whole level, footprint fractions of the nominal size
    small = context_crops(PlanWindow(0, 1, 976, 0, 1024, 1024), 1500, 2000, count=1)[0]
    assert small.window == PlanWindow(1, 2, 0, 0, 1000, 750)
    assert small.rel_box == (976 / 2 / 1024, 0.0, 2000 / 2 / 1024, 0.5)


def test_window_and_overlap_are_validated_everywhere():
    from hbdnet.pyramid import pyramid_levels, validate_window, window_starts

    for window, overlap in [(0, 0), (-5, 0), (512, 512), (512, -1), (512, 600)]:
        with pytest.raises(ValueError, match="window|overlap"):
            validate_window(window, overlap)
        with pytest.raises(ValueError):
            window_starts(4096, window, overlap)  # no ZeroDivisionError, no empty or endless list
        with pytest.raises(ValueError):
            plan_pyramid(4096, 4096, window=window, overlap=overlap)
    with pytest.raises(ValueError, match="max_side"):
        pyramid_levels(4096, 4096, max_side=0)  # would never stop halving
    assert window_starts(4096, 1, 0)[-1] == 4095
