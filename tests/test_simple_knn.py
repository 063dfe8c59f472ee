"""simple_knn.distCUDA2 against a brute-force all-pairs computation."""
import pytest
import torch

import simple_knn
from simple_knn._C import distCUDA2


pytestmark = pytest.mark.usefixtures("single_thread")


def brute_force(points: torch.Tensor) -> torch.Tensor:
    """Mean of the min(3, N-1) smallest squared distances to other points, in float64."""
    p = points.double()
    d = (p[:, None, :] - p[None, :, :]).square().sum(2)
    d.fill_diagonal_(float("inf"))
    k = min(3, p.shape[0] - 1)
    return d.topk(k, dim=1, largest=False).values.mean(1)


def check(points: torch.Tensor):
    out = distCUDA2(points)
    assert out.dtype == torch.float32 and out.shape == (points.shape[0],)
    assert out.device == points.device
    torch.testing.assert_close(out.double().cpu(), brute_force(points.cpu()), rtol=1e-6,
                               atol=0)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_random_points(seed):
    g = torch.Generator().manual_seed(seed)
    check(torch.rand(1500, 3, generator=g))
    stretch = torch.tensor([5.0, 0.1, 1e-3], dtype=torch.float64)
    check(torch.randn(1500, 3, generator=g, dtype=torch.float64) * stretch)


def test_points_on_a_surface_and_a_lattice():
    g = torch.Generator().manual_seed(2)
    d = torch.randn(1200, 3, generator=g)
    check(d / d.norm(dim=1, keepdim=True))                       # a sphere: ties are rare
    ax = torch.arange(8, dtype=torch.float32)
    lattice = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    out = check(lattice)                                         # many exact ties
    assert torch.all(out == 1.0)


def test_duplicates():
    g = torch.Generator().manual_seed(3)
    base = torch.rand(300, 3, generator=g)
    out = check(torch.cat([base, base]))                         # one twin each
    assert torch.all(out > 0)
    out = check(torch.cat([base] * 4))                           # three twins: exactly 0
    assert torch.all(out == 0)
    few = torch.randint(0, 4, (600, 3), generator=g).float()     # heavy duplication
    check(few)
    assert torch.all(distCUDA2(torch.ones(10, 3)) == 0)


def test_clusters_and_outliers_use_several_grids(monkeypatch):
    g = torch.Generator().manual_seed(4)
    pts = torch.cat([torch.randn(500, 3, generator=g) * 1e-4,
                     torch.randn(500, 3, generator=g) * 10 + 100,
                     torch.rand(7, 3, generator=g) * 1e4])
    check(pts)
    # tiny chunks: a chunk may hold a single query
    monkeypatch.setattr(simple_knn, "MAX_PAIRS", 64)
    check(pts)


def test_small_n():
    assert distCUDA2(torch.zeros(0, 3)).shape == (0,)
    torch.testing.assert_close(distCUDA2(torch.tensor([[1.0, 2.0, 3.0]])), torch.zeros(1))
    p2 = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    torch.testing.assert_close(distCUDA2(p2), torch.tensor([25.0, 25.0]))
    p3 = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    torch.testing.assert_close(distCUDA2(p3), torch.tensor([2.5, 3.0, 4.5]))
    p4 = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    torch.testing.assert_close(distCUDA2(p4), torch.tensor([14 / 3, 16 / 3, 22 / 3, 32 / 3]))


def test_no_gradient_and_bad_shape():
    p = torch.rand(50, 3, requires_grad=True)
    assert not distCUDA2(p).requires_grad
    with pytest.raises(ValueError):
        distCUDA2(torch.rand(10, 2))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(5)
    p = torch.rand(3000, 3, generator=g)
    out = distCUDA2(p.cuda())
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), distCUDA2(p))
