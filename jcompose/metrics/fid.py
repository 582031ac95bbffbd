"""FID and KID on FID-Inception pool3 features: preprocessing, float64 statistics, distances.

Preprocessing modes (which published tool the numbers match):

* ``"pytorch-fid"`` (default): bilinear resize to 299 with half-pixel centres and no antialias
  (PyTorch `F.interpolate(..., align_corners=False)`, inside the jit), input 2x - 1 of [0, 1];
* ``"clean"`` (clean-fid): PIL bicubic resize of each channel as float32 (no re-quantisation), on
  the host, clipped to [0, 255], then (x - 128) / 128.

Statistics accumulate in float64 on the host (`FeatureStats`); the Frechet distance is computed
in float64 from the eigenvalues of sigma1 @ sigma2 (torch-fidelity's method; float32 is off by
~1e-3 at FID ~100). Reference statistics are `.npz` files with pytorch-fid's fields ``mu`` (2048,)
and ``sigma`` (2048, 2048).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jcompose.cli import InputError
from jcompose.metrics.inception import IMAGE_SIZE

MODES = ("pytorch-fid", "clean")


def resize_bilinear(images: jax.Array, size: int = IMAGE_SIZE) -> jax.Array:
    """(N, H, W, C) -> (N, size, size, C), as PyTorch bilinear with align_corners=False.

    jax's 'linear' without antialias samples at half-pixel centres with two taps, which is
    PyTorch's rule for both up- and down-sampling (PyTorch does not antialias either).
    """
    if images.shape[1:3] == (size, size):
        return images
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "linear", antialias=False)


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) interpolation weights of PyTorch bilinear, align_corners=False, no antialias."""
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights


def resize_bilinear_host(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """`resize_bilinear` of one (H, W, C) image on the host (numpy, float32): the input pipeline's
    version, so images of any size need no device program per size."""
    rows, cols = _bilinear_matrix(image.shape[0], size), _bilinear_matrix(image.shape[1], size)
    # Two matrix products (rows, then columns): a three-operand einsum without contraction order
    # loops over every (i, h, w, j) and took ~100 s for one 512x384 image.
    height_resized = np.tensordot(rows, image.astype(np.float64), axes=(1, 0))  # (size, W, C)
    return np.einsum("jw,iwc->ijc", cols, height_resized, optimize=True).astype(np.float32)


def pytorch_fid_input(images: jax.Array) -> jax.Array:
    """Images in [-1, 1] (any size) -> the Inception input of pytorch-fid (resize in-graph).

    pytorch-fid resizes [0, 1] images and then maps them to 2x - 1; bilinear weights sum to one,
    so resizing the [-1, 1] images directly is the same map.
    """
    return resize_bilinear(images.astype(jnp.float32))


def clean_fid_input(image_uint8: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """One (H, W, 3) uint8 image -> (size, size, 3) float32 Inception input, as clean-fid does.

    PIL bicubic on each channel in float ('F') mode, no quantisation, clip to [0, 255], then
    (x - 128) / 128 (the normalisation inside the FID TorchScript model).
    """
    from PIL import Image

    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"clean-fid input must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    channels = [np.asarray(Image.fromarray(image[:, :, c].astype(np.float32), mode="F")
                           .resize((size, size), resample=Image.BICUBIC)) for c in range(3)]
    resized = np.clip(np.stack(channels, axis=-1), 0, 255)
    return ((resized - 128.0) / 128.0).astype(np.float32)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] float images -> uint8 as saving them to PNG would (round half up, clip)."""
    return np.clip(np.floor((np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------- statistics


class FeatureStats:
    """Streaming float64 mean / covariance of feature rows (optionally keeping the rows for KID).

    Sums are taken about a shift (the first batch's mean) so that sum(x x^T) - n mu mu^T does not
    cancel catastrophically; the covariance uses n - 1 like `np.cov` (pytorch-fid).
    """

    def __init__(self, dim: int = 2048, keep_features: bool = False):
        self.dim = dim
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(dim, np.float64)
        self._outer = np.zeros((dim, dim), np.float64)
        self._kept: list[np.ndarray] | None = [] if keep_features else None

    def update(self, features: np.ndarray) -> None:
        """features: (B, dim) rows (any float dtype)."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must be (batch, {self.dim}), got {x.shape}")
        if self._shift is None:
            self._shift = x.mean(axis=0)
        centred = x - self._shift
        self._sum += centred.sum(axis=0)
        self._outer += centred.T @ centred
        self.n += x.shape[0]
        if self._kept is not None:
            self._kept.append(np.asarray(features, np.float32))

    @property
    def features(self) -> np.ndarray:
        if self._kept is None:
            raise ValueError("FeatureStats(keep_features=False) keeps no feature rows (KID needs them)")
        return np.concatenate(self._kept) if self._kept else np.zeros((0, self.dim), np.float32)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu (dim,), sigma (dim, dim)) in float64; needs at least two rows."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 images, got {self.n}")
        n, mean, scatter = self.moments()
        return mean, scatter / (n - 1)

    def moments(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(n, mean (dim,), scatter (dim, dim)) in float64, scatter = sum over rows of (x - mean)(x - mean)^T."""
        if self.n == 0:
            return 0, np.zeros(self.dim), np.zeros((self.dim, self.dim))
        centred_mean = self._sum / self.n
        return self.n, self._shift + centred_mean, self._outer - self.n * np.outer(centred_mean, centred_mean)

    @classmethod
    def merge(cls, parts: list[tuple[int, np.ndarray, np.ndarray]]) -> FeatureStats:
        """Statistics of the union of disjoint row sets given by their `moments()` (e.g. one per host):
        Chan et al.'s pairwise update, scatter = sum_i scatter_i + n_i (mean_i - mean)(mean_i - mean)^T.
        The result keeps no feature rows."""
        parts = [(int(n), np.asarray(m, np.float64), np.asarray(s, np.float64)) for n, m, s in parts if n]
        if not parts:
            raise ValueError("no statistics to merge")
        total = cls(parts[0][1].size)
        total.n = sum(n for n, _, _ in parts)
        mean = sum(n * m for n, m, _ in parts) / total.n
        total._shift, total._sum = mean, np.zeros_like(mean)
        total._outer = sum(s + n * np.outer(m - mean, m - mean) for n, m, s in parts)
        return total


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Writes pytorch-fid-compatible reference statistics (`mu`, `sigma`)."""
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads `mu` (D,) and `sigma` (D, D) from a pytorch-fid / clean-fid style `.npz`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FID statistics file not found")
    with np.load(path) as data:  # allow_pickle=False: an object array (a pickle) is refused, never loaded
        missing = [k for k in ("mu", "sigma") if k not in data.files]
        if missing:
            raise ValueError(f"{path}: FID statistics need fields 'mu' (D,) and 'sigma' (D, D); "
                             f"missing {missing} (has {data.files})")
        fields = {}
        for name in ("mu", "sigma"):
            try:
                fields[name] = np.asarray(data[name], np.float64)
            except ValueError as err:
                if "allow_pickle" not in str(err):
                    raise ValueError(f"{path}: field {name!r}: {err}") from None
                raise InputError(f"{path}: field {name!r} is an object array (pickled Python objects), refused: FID "
                                 "statistics must be numeric arrays") from None
        mu, sigma = fields["mu"], fields["sigma"]
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"{path}: 'mu' must be (D,) and 'sigma' (D, D); got {mu.shape} and {sigma.shape}")
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr sqrt(s1 s2), all in float64 on the host.

    tr sqrt(s1 s2) is the sum of the square roots of the eigenvalues of s1 s2 (which are real and
    non-negative for covariances; tiny negative / imaginary round-off is dropped).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)
    tr_covmean = np.sqrt(eigenvalues).real.sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, degree: int = 3, coef0: float = 1.0,
                              seed: int = 0) -> tuple[float, float]:
    """KID (mean, std over subsets): unbiased MMD^2 with the kernel (x.y / D + coef0)^degree.

    As clean-fid / torch-fidelity: each subset draws `min(subset_size, n)` rows of each set
    without replacement.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"KID needs two (N, D) feature sets with the same D, got {f1.shape} and {f2.shape}")
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(f1)} and {len(f2)}")
    rng = np.random.default_rng(seed)
    dim = f1.shape[1]
    values = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx = (x @ x.T / dim + coef0) ** degree
        kyy = (y @ y.T / dim + coef0) ** degree
        kxy = (x @ y.T / dim + coef0) ** degree
        values.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2.0 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def feature_fn(module, mode: str = "pytorch-fid"):
    """A jit-able `(params, images) -> (N, 2048) features` for one preprocessing mode.

    "pytorch-fid": images (N, H, W, 3) in [-1, 1], any size (resized in-graph);
    "clean": images already made by `clean_fid_input` (N, 299, 299, 3).
    """
    if mode not in MODES:
        raise ValueError(f"FID mode {mode!r}: expected one of {MODES}")

    def apply(params, images):
        x = pytorch_fid_input(images) if mode == "pytorch-fid" else images.astype(jnp.float32)
        return module.apply({"params": params}, x)

    return apply
