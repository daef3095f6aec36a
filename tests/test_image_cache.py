"""LabelledImages keeps decoded images of a small set (decoded once, not once per epoch), hands a
tensor transform a copy (an in-place transform cannot change what the next epoch sees) and stops
caching at its byte budget."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import bench.core.data as data
from bench.core.data import LabelledImages


def _write(tmp_path, n=4, size=8):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        samples.append((path, i % 2))
    return samples


class AddOneInPlace:
    tensor_input = True  # what bench.core.transforms.wants_tensor reads

    def __call__(self, x):
        return x.add_(1)


def _count_decodes(monkeypatch):
    calls = []
    real = data.decode_rgb

    def counted(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(data, "decode_rgb", counted)
    return calls


def test_each_image_is_decoded_once_and_in_place_transforms_see_a_copy(tmp_path, monkeypatch):
    samples = _write(tmp_path)
    calls = _count_decodes(monkeypatch)
    ds = LabelledImages(samples, ["a", "b"], AddOneInPlace())
    first = [ds[i][0].clone() for i in range(len(ds))]
    second = [ds[i][0] for i in range(len(ds))]
    assert len(calls) == len(samples)  # the second epoch decoded nothing
    expected = [torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1) + 1 for p, _ in samples]
    for a, b, e in zip(first, second, expected):
        assert torch.equal(a, e) and torch.equal(b, e)  # +1 once, never twice


def test_the_budget_bounds_what_is_kept(tmp_path, monkeypatch):
    samples = _write(tmp_path, n=4, size=8)
    calls = _count_decodes(monkeypatch)
    monkeypatch.setattr(LabelledImages, "CACHE_BYTES", 2 * 3 * 8 * 8)  # room for two images
    ds = LabelledImages(samples, ["a", "b"], AddOneInPlace())
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert ds._cached_bytes == 2 * 3 * 8 * 8
    assert len(calls) == 4 + 2  # the two that did not fit are decoded again


def test_pil_images_are_cached_too(tmp_path, monkeypatch):
    samples = _write(tmp_path)
    calls = []
    real = data.load_rgb
    monkeypatch.setattr(data, "load_rgb", lambda p: calls.append(p) or real(p))
    ds = LabelledImages(samples, ["a", "b"], None)
    a = [np.array(ds[i][0]) for i in range(len(ds))]
    b = [np.array(ds[i][0]) for i in range(len(ds))]
    assert len(calls) == len(samples) and all((x == y).all() for x, y in zip(a, b))
