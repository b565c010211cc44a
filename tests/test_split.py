"""AE&ER split (Eq. 3-7) against a slow per-patch loop written independently with numpy."""

import itertools

import numpy as np
import pytest
import torch

from nnunet_dale.split import fuzzy_split, label_edges, minmax_normalise, soft_masks


def slow_patches(shape, patch):
    """Yield slices of every patch, C order, last patch per axis possibly smaller."""
    starts = [range(0, s, p) for s, p in zip(shape, patch)]
    for corner in itertools.product(*starts):
        yield tuple(slice(c, min(c + p, s)) for c, p, s in zip(corner, patch, shape))


def slow_entropy(image, patch, bins):
    """Shannon entropy of each patch's histogram (bins over each channel's own range), mean over channels."""
    out = []
    for sl in slow_patches(image.shape[1:], patch):
        per_channel = []
        for ch in image:
            lo, hi = ch.min(), ch.max()
            levels = (
                np.zeros(ch.shape, int)
                if hi == lo
                else np.minimum(((ch - lo) / (hi - lo) * bins).astype(int), bins - 1)
            )
            counts = np.bincount(levels[sl].ravel(), minlength=bins)
            p = counts[counts > 0] / counts.sum()
            per_channel.append(-(p * np.log(p)).sum())
        out.append(np.mean(per_channel))
    return np.array(out)


def slow_edges(labels):
    """A voxel is an edge if any voxel in its 3^d neighbourhood (inside the image) has another label."""
    edges = np.zeros(labels.shape[1:], bool)
    for idx in np.ndindex(*labels.shape[1:]):
        window = tuple(slice(max(i - 1, 0), i + 2) for i in idx)
        for ch in labels:
            if (ch[window] != ch[idx]).any():
                edges[idx] = True
    return edges


def slow_split(image, labels, patch, tau, bins):
    r = slow_entropy(image, patch, bins)
    edges = slow_edges(labels)
    e = np.array([edges[sl].mean() for sl in slow_patches(labels.shape[1:], patch)])

    def norm(v):
        return np.zeros_like(v) if v.max() == v.min() else (v - v.min()) / (v.max() - v.min())

    m = np.maximum(norm(r), norm(e))
    mf = np.array([1.0 if x > tau else x for x in m])
    mn = np.array([1.0 if x < tau else max(tau - x, 0.0) for x in m])
    fuzzy, nonfuzzy = np.zeros(image.shape[1:]), np.zeros(image.shape[1:])
    for j, sl in enumerate(slow_patches(image.shape[1:], patch)):
        fuzzy[sl], nonfuzzy[sl] = mf[j], mn[j]
    return fuzzy, nonfuzzy, m


def random_case(rng, spatial, channels=2):
    image = rng.normal(size=(channels, *spatial)).astype(np.float32)
    image[:, : spatial[0] // 3] *= 0.1  # calmer region: lower entropy
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in spatial], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    labels = (radius < 0.6).astype(np.float32) + (rng.random(spatial) < 0.05)
    return image, labels[None]


@pytest.mark.parametrize(
    "spatial,patch,tau",
    [((32, 32), (8, 8), 0.9), ((30, 37), (8, 16), 0.5), ((12, 16, 10), (4, 8, 4), 0.9), ((9, 10, 11), (4, 4, 4), 1.0)],
)
def test_split_matches_slow_loop(spatial, patch, tau):
    rng = np.random.default_rng(0)
    cases = [random_case(rng, spatial) for _ in range(2)]
    image = torch.from_numpy(np.stack([c[0] for c in cases]))
    labels = torch.from_numpy(np.stack([c[1] for c in cases]))
    split = fuzzy_split(image, labels, patch, tau=tau, bins=8)
    for b, (img, lab) in enumerate(cases):
        fuzzy, nonfuzzy, m = slow_split(img, lab, patch, tau, bins=8)
        np.testing.assert_allclose(split.score[b].numpy(), m, atol=1e-5)
        np.testing.assert_allclose(split.fuzzy[b, 0].numpy(), fuzzy, atol=1e-5)
        np.testing.assert_allclose(split.nonfuzzy[b, 0].numpy(), nonfuzzy, atol=1e-5)
    assert split.fuzzy.shape == (2, 1, *spatial)


def test_single_criterion_ablations_use_only_that_criterion():
    rng = np.random.default_rng(1)
    img, lab = random_case(rng, (32, 32))
    image, labels = torch.from_numpy(img[None]), torch.from_numpy(lab[None])
    only_edges = fuzzy_split(image, labels, (8, 8), use_entropy=False)
    only_entropy = fuzzy_split(image, labels, (8, 8), use_edges=False)
    edges = slow_edges(lab)
    e = np.array([edges[sl].mean() for sl in slow_patches((32, 32), (8, 8))])
    np.testing.assert_allclose(only_edges.score[0].numpy(), (e - e.min()) / (e.max() - e.min()), atol=1e-6)
    r = slow_entropy(img, (8, 8), 32)
    np.testing.assert_allclose(only_entropy.score[0].numpy(), (r - r.min()) / (r.max() - r.min()), atol=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        fuzzy_split(image, labels, (8, 8), use_entropy=False, use_edges=False)


def test_constant_image_and_empty_label_give_zero_score():
    """Eq. 5 with max = min: the normalised value is 0, so everything is non-fuzzy."""
    image = torch.full((1, 1, 32, 32), 3.0)
    labels = torch.zeros((1, 1, 32, 32))
    split = fuzzy_split(image, labels, (16, 16))
    assert torch.all(split.score == 0)
    assert torch.all(split.fuzzy == 0) and torch.all(split.nonfuzzy == 1)


def test_soft_masks_piecewise():
    m = torch.tensor([[0.0, 0.3, 0.9, 0.95, 1.0]])
    fuzzy, nonfuzzy = soft_masks(m, 0.9)
    np.testing.assert_allclose(fuzzy.numpy(), [[0.0, 0.3, 0.9, 1.0, 1.0]])
    np.testing.assert_allclose(nonfuzzy.numpy(), [[1.0, 1.0, 0.0, 0.0, 0.0]])  # tau - m <= 0 clamped to 0


def test_minmax_per_image():
    v = torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    np.testing.assert_allclose(minmax_normalise(v).numpy(), [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])


def test_label_edges_multichannel_regions():
    regions = np.zeros((2, 12, 12), np.float32)
    regions[0, 2:8, 2:8] = 1
    regions[1, 6:10, 6:10] = 1
    got = label_edges(torch.from_numpy(regions[None]))[0, 0].numpy()
    np.testing.assert_array_equal(got, slow_edges(regions))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="do not match"):
        fuzzy_split(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 8, 8), (4, 4))
