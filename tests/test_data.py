"""Data loaders and sample pictures."""

import numpy as np
import pytest
import torch

from sdeflow import data
from sdeflow.data.pictures import image_grid, points_image


def test_digits_are_scaled_to_the_unit_interval_with_labels():
    d = data.digits()
    assert d.x.shape == (1797, 1, 8, 8) and d.kind == "image" and d.num_classes == 10
    assert float(d.x.min()) == -1.0 and float(d.x.max()) == 1.0
    assert torch.allclose(d.to_raw(d.x) * 8.0 - 8.0 * d.to_raw(d.x), torch.zeros(1))  # raw values are 0..16
    raw = d.to_raw(d.x)
    assert float(raw.min()) == 0.0 and float(raw.max()) == 16.0 and torch.equal(raw, raw.round())


@pytest.mark.parametrize("name", sorted(data.TOYS))
def test_toys_are_reproducible_and_unit_scale(name):
    a, b, c = data.TOYS[name](5000, 1), data.TOYS[name](5000, 1), data.TOYS[name](5000, 2)
    assert a.shape == (5000, 2) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0.5 < float(a.std()) < 2.0 and float(a.abs().max()) < 4.0


def test_checkerboard_occupies_the_dark_squares_only():
    x = data.checkerboard(20000)
    col, row = torch.floor(x[:, 0]) + 2, torch.floor(x[:, 1]) + 2
    assert bool(((col + row) % 2 == 0).all())
    counts = torch.bincount((col * 4 + row).long(), minlength=16)
    assert (counts > 0).sum() == 8 and counts[counts > 0].min() > 0.8 * 20000 / 8


def test_image_folder_crops_resizes_and_labels_by_subfolder(tmp_path):
    from PIL import Image

    for cls, value in (("cats", 0), ("dogs", 255)):
        (tmp_path / cls).mkdir()
        for k in range(3):
            img = np.full((12, 20, 3), value, dtype=np.uint8)
            img[:, :4] = 128  # outside the centre crop
            Image.fromarray(img).save(tmp_path / cls / f"{k}.png")
    d = data.image_folder(str(tmp_path), size=6)
    assert d.x.shape == (6, 3, 6, 6) and d.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.allclose(d.x[:3], torch.full((3, 3, 6, 6), -1.0)) and torch.allclose(d.x[3:], torch.ones(3, 3, 6, 6))
    assert d.info["classes"] == ["cats", "dogs"]
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "cats" / "gray.png")
    with pytest.raises(ValueError, match="mode L in a folder of RGB"):
        data.image_folder(str(tmp_path), size=6)
    (tmp_path / "cats" / "gray.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a readable image"):
        data.image_folder(str(tmp_path), size=6)
    with pytest.raises(ValueError, match="does not exist"):
        data.image_folder(str(tmp_path / "dogs" / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG"):
        data.image_folder(str(tmp_path / "empty"))


def test_array_files(tmp_path):
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    d = data.load(str(tmp_path / "a.npy"))
    assert torch.equal(d.x, torch.from_numpy(x)) and d.labels is None and d.kind == "vector"
    s = data.load(str(tmp_path / "a.npy"), standardize=True)
    assert abs(float(s.x.mean())) < 1e-5 and abs(float(s.x.std()) - 1) < 1e-5
    assert torch.allclose(s.to_raw(s.x), torch.from_numpy(x), atol=1e-5)
    np.savez(tmp_path / "b.npz", x=x, labels=np.arange(50) % 5)
    d = data.load(str(tmp_path / "b.npz"))
    assert d.num_classes == 5
    np.savez(tmp_path / "c.npz", a=x, b=x)
    with pytest.raises(ValueError, match="under 'x'"):
        data.load(str(tmp_path / "c.npz"))
    x[0, 0] = np.nan
    np.save(tmp_path / "d.npy", x)
    with pytest.raises(ValueError, match="NaN"):
        data.load(str(tmp_path / "d.npy"))
    np.savez(tmp_path / "e.npz", x=x[1:], labels=-np.ones(49, dtype=int))
    with pytest.raises(ValueError, match="non-negative"):
        data.load(str(tmp_path / "e.npz"))


def test_pictures():
    x = torch.linspace(-1, 1, 5 * 64).reshape(5, 1, 8, 8)
    g = image_grid(x, nrow=3, pad=1, upscale=2)
    assert g.shape == (2 * 17 + 1, 3 * 17 + 1, 1) and g.dtype == np.uint8
    assert g[1, 1, 0] == 0 and g[1 + 15, 1 + 2 * 17 + 15, 0] > 0  # first pixel black, upscaled block kept
    p = points_image(torch.zeros(10, 2), size=50, lim=1.0)
    assert p.shape == (50, 50, 3) and p[25, 25].sum() < p[0, 0].sum()
    with pytest.raises(ValueError):
        image_grid(torch.zeros(2, 2, 8, 8))
