"""Fréchet Inception Distance: streaming feature statistics and the Fréchet distance.

FID (Heusel et al., 2017) compares two image sets through Gaussians fitted to their Inception
pool features (`muse_jax.weights.inception.feature_fn`):

  FID = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))

Statistics stream: `FeatureStats` keeps the count n, the sum s = sum_i x_i and the sum of outer
products P = sum_i x_i x_i^T, all in float64. Batches, shards and processes merge by adding
these three (`merge`); each process can also save its statistics and a later step merge the
files. From them
  mean = s / n,   cov = (P - n mean mean^T) / (n - 1)   (unbiased, as numpy.cov and pytorch-fid)
The subtraction cancels about log10(mean^2 / var) of float64's ~16 digits per entry, which for
Inception features (non-negative, mean and spread of one order) leaves far more than FID needs.

Matrix square root: only its trace is needed. With R1 = S1^(1/2), R2 = S2^(1/2) (symmetric
roots from `eigh`), eig(S1 S2) = eig(R1 R1 R2 R2) = eig(R2 R1 R1 R2) (eig(AB) = eig(BA)), and
R2 R1 R1 R2 = (R1 R2)^T (R1 R2), so
  Tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(S1 S2)) = sum of the singular values of R1 R2.
This is used instead of `scipy.linalg.sqrtm(S1 @ S2)` (pytorch-fid's method) because that
product is not symmetric: sqrtm's Schur method can return complex parts or fail on a singular
product (fewer images than feature dimensions), which pytorch-fid patches with an epsilon
offset on the diagonals and a check on the imaginary parts. Symmetric eigen-decompositions and
the SVD are backward stable and always real, so neither patch is needed. Eigenvalues of S1, S2
at round-off level (below D * eps * the largest, including negative ones) are set to 0 before
their roots are taken; the singular values then carry absolute errors of about eps * ||R1 R2||.
(Summing square roots of eigenvalues instead, e.g. of R1 S2 R1, would turn each round-off
eigenvalue of a singular covariance, ~1e-16, into an error of ~1e-8.) For 2048-d features it
is also cheaper than sqrtm.
"""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np

from muse_jax import paths


@dataclasses.dataclass(frozen=True)
class Gaussian:
  """Mean [D] and covariance [D, D] (float64) of `count` feature vectors (None: unknown)."""
  mean: np.ndarray
  cov: np.ndarray
  count: int | None = None


class FeatureStats:
  """Float64 count / sum / sum of outer products of feature vectors of one dimension."""

  def __init__(self, dim: int):
    self.dim = int(dim)
    self.count = 0
    self.total = np.zeros((self.dim,), np.float64)
    self.outer = np.zeros((self.dim, self.dim), np.float64)

  def update(self, features) -> "FeatureStats":
    """Adds a batch [N, D] (any float dtype; accumulated in float64). Returns self."""
    f = np.asarray(features)
    if f.ndim != 2 or f.shape[1] != self.dim:
      raise ValueError(f"features must be [batch, {self.dim}], got shape {f.shape}")
    if not np.issubdtype(f.dtype, np.floating):
      raise ValueError(f"features must be floating point, got dtype {f.dtype}")
    f = f.astype(np.float64)
    bad = int(np.sum(~np.all(np.isfinite(f), axis=1)))
    if bad:
      raise ValueError(f"{bad} of {len(f)} feature rows are not finite (NaN/inf images?)")
    self.count += len(f)
    self.total += f.sum(axis=0)
    self.outer += f.T @ f
    return self

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """Statistics of both sets (a new object): the three accumulators add."""
    if other.dim != self.dim:
      raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
    out = FeatureStats(self.dim)
    out.count = self.count + other.count
    out.total = self.total + other.total
    out.outer = self.outer + other.outer
    return out

  @classmethod
  def from_gaussian(cls, g: Gaussian) -> "FeatureStats":
    """Back to sums from a saved mean/cov/count: s = n mean, P = (n - 1) cov + n mean mean^T."""
    if g.count is None:
      raise ValueError("statistics without a count cannot be merged")
    mean, n = np.asarray(g.mean, np.float64), int(g.count)
    out = cls(mean.shape[0])
    out.count = n
    out.total = n * mean
    out.outer = (n - 1) * np.asarray(g.cov, np.float64) + n * np.outer(mean, mean)
    return out

  @property
  def mean(self) -> np.ndarray:
    if self.count < 1:
      raise ValueError("no features accumulated")
    return self.total / self.count

  @property
  def cov(self) -> np.ndarray:
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 features, have {self.count}")
    mean = self.mean
    cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
    return (cov + cov.T) / 2

  def gaussian(self) -> Gaussian:
    return Gaussian(self.mean, self.cov, self.count)


def save_stats(path: str, stats: FeatureStats | Gaussian, info: dict | None = None) -> None:
  """Writes `mean`, `cov` (float64) and `count` to a .npz file, and `info` (a JSON-able dict,
  e.g. which Inception weights made the features) as the JSON string array `info`."""
  g = stats.gaussian() if isinstance(stats, FeatureStats) else stats
  count = -1 if g.count is None else g.count
  extra = {} if info is None else {"info": np.array(json.dumps(info, sort_keys=True))}
  buf = io.BytesIO()   # a file object: numpy appends no ".npz" to the name
  np.savez(buf, mean=g.mean, cov=g.cov, count=np.int64(count), **extra)
  paths.write_atomic(path, buf.getvalue())


def load_stats(path: str) -> Gaussian:
  """Reads `save_stats` files, and pytorch-fid's `mu` / `sigma` files (count unknown)."""
  with np.load(io.BytesIO(paths.resolve(path).read_bytes())) as z:
    keys = set(z.files)
    if {"mean", "cov", "count"} <= keys:
      count = int(z["count"])
      return Gaussian(z["mean"].astype(np.float64), z["cov"].astype(np.float64),
                      None if count < 0 else count)
    if {"mu", "sigma"} <= keys:
      return Gaussian(z["mu"].astype(np.float64), z["sigma"].astype(np.float64), None)
  raise ValueError(f"{path}: expected arrays mean, cov, count (or mu, sigma), found "
                   f"{sorted(keys)}")


def load_stats_info(path: str) -> dict | None:
  """The `info` dict `save_stats` stored in `path`, or None (none stored, e.g. pytorch-fid's
  files)."""
  with np.load(io.BytesIO(paths.resolve(path).read_bytes())) as z:
    return json.loads(str(z["info"])) if "info" in z.files else None


def psd_sqrt(s: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix; round-off eigenvalues (<= D * eps *
  the largest magnitude, negative ones included) become 0."""
  w, v = np.linalg.eigh((s + s.T) / 2)
  floor = s.shape[0] * np.finfo(np.float64).eps * max(np.abs(w).max(initial=0.0), 1e-300)
  root = np.sqrt(np.where(w > floor, w, 0.0))
  return (v * root) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
  """Tr((S1 S2)^(1/2)) = sum of singular values of S1^(1/2) S2^(1/2) (module docstring)."""
  return float(np.sum(np.linalg.svd(psd_sqrt(s1) @ psd_sqrt(s2), compute_uv=False)))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

  Not clipped at 0: for equal inputs round-off leaves a value of either sign near 0.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.ndim != 1:
    raise ValueError(f"mu1 must be a vector [D], got shape {mu1.shape}")
  d = mu1.shape[0]
  for name, a, shape in (("mu1", mu1, (d,)), ("mu2", mu2, (d,)), ("sigma1", s1, (d, d)),
                         ("sigma2", s2, (d, d))):
    if a.shape != shape:
      raise ValueError(f"{name} has shape {a.shape}; expected {shape} (mu1 sets D = {d})")
    if not np.all(np.isfinite(a)):
      raise ValueError(f"{name} has non-finite entries")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def fid(a: FeatureStats | Gaussian, b: FeatureStats | Gaussian) -> float:
  """FID between two sets given as streaming statistics or (loaded) Gaussians."""
  ga = a.gaussian() if isinstance(a, FeatureStats) else a
  gb = b.gaussian() if isinstance(b, FeatureStats) else b
  return frechet_distance(ga.mean, ga.cov, gb.mean, gb.cov)
