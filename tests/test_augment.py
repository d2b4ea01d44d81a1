import torch

from perceiver_cli.data.augment import random_crop, random_flip
from perceiver_cli.recipe import AugmentConfig
from perceiver_cli.data.augment import augment_images


def _images():
    return torch.arange(2 * 4 * 5 * 1, dtype=torch.uint8).reshape(2, 4, 5, 1)


def test_crop_is_a_shift_of_the_padded_image_and_keeps_dtype():
    images = _images()
    generator = torch.Generator().manual_seed(0)
    for mode in ("reflect", "zeros"):
        out = random_crop(images, 2, mode, generator)
        assert out.shape == images.shape and out.dtype == torch.uint8
        for b in range(2):
            padded = torch.nn.functional.pad(images[b, :, :, 0].float()[None], (2, 2, 2, 2), mode="reflect" if mode == "reflect" else "constant")[0]
            windows = [padded[dy : dy + 4, dx : dx + 5] for dy in range(5) for dx in range(5)]
            assert any(torch.equal(out[b, :, :, 0].float(), w) for w in windows), mode


def test_crop_with_zero_padding_shows_black_borders_sometimes():
    images = torch.full((64, 4, 4, 1), 200, dtype=torch.uint8)
    out = random_crop(images, 1, "zeros", torch.Generator().manual_seed(0))
    assert (out == 0).any() and (out == 200).any()


def test_flip_mirrors_about_half_the_batch():
    images = _images().repeat(50, 1, 1, 1)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = sum(torch.equal(o, i.flip(1)) for o, i in zip(out, images))
    assert 30 < flipped < 70


def test_augmentation_off_is_identity_and_seeded_on_is_reproducible():
    images = _images()
    assert torch.equal(augment_images(images, AugmentConfig(), torch.Generator()), images)
    config = AugmentConfig(random_crop_padding=1, horizontal_flip=True)
    a = augment_images(images, config, torch.Generator().manual_seed(3))
    b = augment_images(images, config, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_mixup_blends_pairs_with_one_beta_weight_and_is_reproducible():
    from perceiver_cli.data.augment import mix

    x = torch.randn(8, 4, 4, 1)
    mixed, partner, weight = mix(x, 0.4, torch.Generator().manual_seed(1))
    assert 0 <= weight <= 1 and sorted(partner.tolist()) == list(range(8))
    torch.testing.assert_close(mixed, weight * x + (1 - weight) * x[partner])
    again, partner2, weight2 = mix(x, 0.4, torch.Generator().manual_seed(1))
    assert weight2 == weight and torch.equal(partner2, partner)
    assert mix(x, 0.0, torch.Generator())[1] is None


def test_training_with_mixup_runs(cli, workdir, tiny):
    from conftest import set_args

    result = cli("train", *set_args(tiny + ["data.augment.mixup=0.2"]))
    assert result.exit_code == 0, result.output


def _centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """(B, 2) row/column centre of the brightness of B H W 1 images."""
    weights = images[..., 0].float()
    rows = torch.arange(images.shape[1]).float()[None, :, None]
    cols = torch.arange(images.shape[2]).float()[None, None, :]
    total = weights.sum((1, 2))
    return torch.stack([(weights * rows).sum((1, 2)) / total, (weights * cols).sum((1, 2)) / total], 1)


def test_affine_translation_moves_a_blob_by_sub_pixel_amounts_within_the_limit():
    from perceiver_cli.data.augment import random_affine

    images = torch.zeros(64, 16, 16, 1, dtype=torch.uint8)
    images[:, 6:10, 6:10] = 240
    out = random_affine(images, 0.0, 0.0, 0.125, "zeros", torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    shift = _centre_of_mass(out) - _centre_of_mass(images)
    assert shift.abs().max() <= 0.125 * 16 + 0.05  # never beyond 2 pixels
    fractional = (shift - shift.round()).abs()
    assert (fractional > 0.1).float().mean() > 0.5  # most shifts fall between whole pixels
    assert out.float().sum((1, 2, 3)).sub(images.float().sum((1, 2, 3))).abs().max() < 0.02 * images[0].float().sum()


def test_affine_rotation_and_scale_keep_the_centre_and_change_the_shape():
    from perceiver_cli.data.augment import random_affine

    images = torch.zeros(32, 16, 16, 1, dtype=torch.uint8)
    images[:, 7:9, 3:13] = 255  # a horizontal bar through the centre
    out = random_affine(images, 30.0, 0.2, 0.0, "zeros", torch.Generator().manual_seed(0))
    torch.testing.assert_close(_centre_of_mass(out), _centre_of_mass(images), atol=0.1, rtol=0)
    changed = [not torch.equal(o, i) for o, i in zip(out, images)]
    assert sum(changed) >= 30
    a = augment_images(images, AugmentConfig(affine_degrees=30, affine_scale=0.2), torch.Generator().manual_seed(5))
    b = augment_images(images, AugmentConfig(affine_degrees=30, affine_scale=0.2), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
