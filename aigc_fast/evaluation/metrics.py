"""Sample-quality metrics on a classifier's features and class probabilities, computed in
float64 with no SciPy: Fréchet distance (FID's formula), kernel distance (KID's unbiased
MMD with the cubic polynomial kernel), a classifier-based Inception Score, and class
coverage."""

from __future__ import annotations

from typing import Tuple

import torch


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T


def _finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"the {what} features hold NaN or inf (images from a diverged model?)")


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½) between Gaussians fitted to the rows
    of a and b ([n, d] features), with the unbiased (n − 1) covariances, as pytorch-fid's
    np.cov. The trace of the matrix square root is taken from the eigenvalues of the
    symmetric Σa^½ Σb Σa^½, so it stays real and stable."""
    a, b = a.double(), b.double()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("the Fréchet distance needs at least 2 samples in each set")
    _finite(a, "first set's")
    _finite(b, "second set's")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root = _sqrt_psd(cov_a)
    cross = torch.linalg.eigvalsh(root @ cov_b @ root).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def kernel_distance(a: torch.Tensor, b: torch.Tensor, *, subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> Tuple[float, float]:
    """KID: the unbiased MMD² between a and b with k(x, y) = (x·y / d + 1)³, averaged over
    `subsets` random subsets of min(subset_size, len(a), len(b)) rows; (mean, std), the std
    over subsets with the 1/N convention (np.std's, as in KID's reference code). A set of
    subset_size rows or fewer is whole in every subset: the std then measures only the
    other set's subsampling (0 when both are)."""
    a, b = a.double(), b.double()
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("the kernel distance needs at least 2 samples in each set")
    _finite(a, "first set's")
    _finite(b, "second set's")
    g = torch.Generator().manual_seed(seed)
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(a.shape[0], generator=g)[:m]]
        y = b[torch.randperm(b.shape[0], generator=g)[:m]]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        off = m * (m - 1)
        values.append((kxx.sum() - kxx.trace()) / off + (kyy.sum() - kyy.trace()) / off - 2 * kxy.mean())
    v = torch.stack(values)
    return float(v.mean()), float(v.std(correction=0))


def inception_score(probs: torch.Tensor, *, splits: int = 10, seed: int = 0) -> Tuple[float, float]:
    """exp(E_x KL(p(y|x) ‖ p(y))) from class probabilities [n, classes], over `splits`
    parts of a seeded shuffle (so that a set sorted by class, as real datasets often are,
    is not split by class); (mean, std). 1 for one class or uniform predictions; at most the
    number of classes (confident predictions spread evenly over every class). The splits
    differ in size by one row at most; fewer than 2 * splits rows make fewer splits, of 2
    rows or more: a split of one row scores 1 whatever the predictions. The std is over the
    splits, with the 1/N convention (np.std's, as in the original Inception Score code)."""
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")
    if probs.shape[0] < 2:
        raise ValueError(f"the Inception Score needs at least 2 samples, got {probs.shape[0]}")
    probs = probs.double()[torch.randperm(probs.shape[0], generator=torch.Generator().manual_seed(seed))]
    scores = []
    for part in probs.tensor_split(min(splits, probs.shape[0] // 2)):  # chunk() can leave a 1-row last split
        marginal = part.mean(0, keepdim=True)
        kl = torch.xlogy(part, part) - torch.xlogy(part, marginal)  # 0 log 0 = 0, also where p(y) = 0
        scores.append(kl.sum(1).mean().exp())
    s = torch.stack(scores)
    return float(s.mean()), float(s.std(correction=0))


def class_coverage(labels: torch.Tensor, num_classes: int) -> Tuple[float, float]:
    """(coverage, KL to uniform) of predicted labels: the share of classes that get at least
    half their fair share (n / 2K) of the samples, and KL(class histogram ‖ uniform) in
    nats (0 when balanced, log K when one class takes everything). Mode collapse shows in
    both."""
    counts = torch.bincount(labels.flatten(), minlength=num_classes).double()
    n = counts.sum()
    coverage = (counts >= n / (2 * num_classes)).double().mean()
    share = counts / n
    kl = torch.xlogy(share, share * num_classes).sum()
    return float(coverage), float(kl)


__all__ = ["class_coverage", "frechet_distance", "inception_score", "kernel_distance"]
