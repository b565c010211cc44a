"""Far false positives, connected components and missed lesions (metrics.far_false_positives / component_count /
missed_components) against slow references: a pairwise-distance loop, a flood fill, and blobs planted at known
positions."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from benchmarks.false_positives import summarise
from nnunet_dale.metrics import component_count, far_false_positives, missed_components


def slow_far_false_positives(pred, ref, spacing, margin):
    p = np.argwhere(pred) * np.asarray(spacing)
    r = np.argwhere(ref) * np.asarray(spacing)
    if len(r) == 0:
        return len(p)
    return int((cdist(p, r).min(axis=1) > margin).sum()) if len(p) else 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 2.0), (1.0, 0.7, 1.3)])
def test_far_false_positives_match_a_pairwise_loop(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = (9, 11, 7)[: len(spacing)]
    pred, ref = rng.random(shape) < 0.2, rng.random(shape) < 0.05
    for margin in (0.0, 1.0, 2.5):
        assert far_false_positives(pred, ref, spacing, margin) == slow_far_false_positives(pred, ref, spacing, margin)


def test_a_planted_blob_far_from_the_lesion_is_counted_and_a_boundary_error_is_not():
    ref = np.zeros((40, 40), bool)
    ref[10:20, 10:20] = True
    pred = ref.copy()
    pred[9, 10:20] = True  # one-pixel boundary error: within the margin
    assert far_false_positives(pred, ref, (1, 1), 3) == 0
    pred[30:33, 30:32] = True  # a 6-pixel blob ~14 px away
    assert far_false_positives(pred, ref, (1, 1), 3) == 6
    assert far_false_positives(pred, np.zeros_like(ref), (1, 1), 3) == int(pred.sum())


def test_components_of_planted_blobs_with_full_connectivity():
    mask = np.zeros((20, 20), bool)
    assert component_count(mask) == 0
    mask[2:5, 2:5] = True
    mask[10, 10] = True
    mask[11, 11] = True  # diagonal neighbour: the same component with 8-connectivity
    mask[15:18, 1] = True
    assert component_count(mask) == 3
    volume = np.zeros((5, 5, 5), bool)
    volume[0, 0, 0] = volume[1, 1, 1] = volume[4, 4, 4] = True  # corner neighbours in 3D: 26-connectivity
    assert component_count(volume) == 2


def slow_missed_components(pred, ref):
    """Flood fill over the full neighbourhood, one reference component at a time."""
    todo, missed = set(map(tuple, np.argwhere(ref))), 0
    offsets = [o for o in np.ndindex(*(3,) * ref.ndim) if any(v != 1 for v in o)]
    while todo:
        stack, hit = [todo.pop()], False
        while stack:
            voxel = stack.pop()
            hit |= bool(pred[voxel])
            for o in offsets:
                n = tuple(v + d - 1 for v, d in zip(voxel, o))
                if n in todo:
                    todo.remove(n)
                    stack.append(n)
        missed += not hit
    return missed


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(17, 13), (7, 8, 9)])
def test_missed_components_match_a_flood_fill(seed, shape):
    rng = np.random.default_rng(seed)
    ref, pred = rng.random(shape) < 0.15, rng.random(shape) < 0.08
    assert missed_components(pred, ref) == slow_missed_components(pred, ref)


def test_a_missed_planted_lesion_is_counted_and_a_touched_one_is_not():
    ref = np.zeros((40, 40), bool)
    ref[5:12, 5:12] = ref[25:30, 25:32] = ref[33, 2] = True
    pred = np.zeros_like(ref)
    pred[11, 11] = True  # one voxel inside the first lesion: found
    pred[20, 20] = True  # a false positive finds nothing
    assert missed_components(pred, ref) == 2
    pred[33, 2] = True
    assert missed_components(pred, ref) == 1
    assert missed_components(pred, np.zeros_like(ref)) == 0


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        far_false_positives(np.zeros((3, 3)), np.zeros((3, 4)), (1, 1), 1)
    with pytest.raises(ValueError, match="margin"):
        far_false_positives(np.zeros((3, 3)), np.zeros((3, 3)), (1, 1), -1)
    with pytest.raises(ValueError, match="2D or 3D"):
        component_count(np.zeros(4))
    with pytest.raises(ValueError, match="differ in shape"):
        missed_components(np.zeros((3, 3)), np.zeros((3, 4)))


def test_summary_pairs_cases_and_tests_against_the_first_method():
    cases = {
        "a": {"x": (0, 1, 0), "y": (2, 1, 1), "z": (0, 1, 0)},
        "b": {"x": (10, 2, 1), "y": (12, 3, 2), "z": (11, 2, 0)},
    }
    table = summarise(cases)
    assert table["a"]["far_fp"] == pytest.approx(2 / 3) and table["b"]["far_fp"] == pytest.approx(11.0)
    assert table["b"]["components"] == pytest.approx(7 / 3) and table["b"]["cases_with_far_fp"] == 1.0
    assert table["a"]["missed"] == pytest.approx(1 / 3) and table["b"]["cases_with_missed"] == pytest.approx(2 / 3)
    assert table["b"]["p_far_fp"] < 0.01 and "p_far_fp" not in table["a"]
    assert table["b"]["p_missed"] == pytest.approx(1 - 2 / 6**0.5)  # differences 1, 1, 0: t = 2 on 2 dof
    with pytest.raises(ValueError, match="same cases"):
        summarise({"a": {"x": (0, 1, 0)}, "b": {"y": (0, 1, 0)}})
