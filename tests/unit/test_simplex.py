"""Simplex projections against brute force over active sets, on random inputs."""

import itertools

import pytest
import torch

from fusion_bench_fw.core.simplex import project_box, project_capped_simplex, project_simplex


def brute_force_projection(v: torch.Tensor, capped: bool) -> torch.Tensor:
    """Enumerate supports S: on S the KKT point is v_S - mu (mu from the sum constraint,
    or mu = 0 when the capped constraint sum <= 1 is inactive). Keep the nearest feasible."""
    v = v.double()
    n = v.numel()
    best, best_d = None, float("inf")
    for size in range(0, n + 1):
        for support in itertools.combinations(range(n), size):
            idx = list(support)
            mus = []
            if size:
                mus.append((v[idx].sum() - 1.0) / size)
            if capped:
                mus.append(torch.tensor(0.0, dtype=torch.float64))
            for mu in mus:
                x = torch.zeros(n, dtype=torch.float64)
                if size:
                    x[idx] = v[idx] - mu
                feasible = bool((x >= -1e-12).all()) and (
                    abs(float(x.sum()) - 1.0) < 1e-9 if not capped else float(x.sum()) <= 1 + 1e-9
                )
                d = float(torch.sum((x - v) ** 2))
                if feasible and d < best_d:
                    best, best_d = x, d
    return best


@pytest.mark.parametrize("seed", range(20))
def test_simplex_projection_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = 1 + seed % 6
    v = torch.randn(n, generator=g, dtype=torch.float64) * (0.3 + seed % 3)
    expected = brute_force_projection(v, capped=False)
    got = project_simplex(v)
    assert torch.allclose(got, expected, atol=1e-10)
    assert abs(float(got.sum()) - 1) < 1e-10 and float(got.min()) >= 0


@pytest.mark.parametrize("seed", range(20))
def test_capped_simplex_projection_matches_brute_force(seed):
    g = torch.Generator().manual_seed(100 + seed)
    n = 1 + seed % 6
    v = torch.randn(n, generator=g, dtype=torch.float64) * 0.5
    expected = brute_force_projection(v, capped=True)
    assert torch.allclose(project_capped_simplex(v), expected, atol=1e-10)


def test_columnwise_projection_equals_per_column():
    g = torch.Generator().manual_seed(7)
    m = torch.randn(5, 9, generator=g, dtype=torch.float64)
    for fn in (project_simplex, project_capped_simplex):
        cols = torch.stack([fn(m[:, j]) for j in range(m.shape[1])], dim=1)
        assert torch.allclose(fn(m), cols, atol=1e-12)


def test_projection_is_idempotent_and_does_not_mutate_input():
    v = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    before = v.clone()
    assert torch.allclose(project_simplex(v), v)
    assert torch.equal(v, before)
    assert torch.equal(project_box(torch.tensor([-1.0, 0.5, 2.0])), torch.tensor([0.0, 0.5, 1.0]))


def test_bad_radius_is_rejected():
    with pytest.raises(ValueError, match="radius"):
        project_simplex(torch.ones(3), radius=0)
