"""Images in memory: seeded subsets, normalisation, batching and augmentation."""

from __future__ import annotations

import pytest
import torch

from sdprune.data.augment import Augment, augment
from sdprune.data.bundle import channel_stats
from sdprune.data.images import ImageSet, drops_last, iterate_batches, normalization, normalize, num_batches
from sdprune.errors import SdpruneError


def test_augment_is_deterministic_per_generator_seed_and_keeps_shape():
    images = torch.randint(0, 256, (16, 3, 10, 12), dtype=torch.uint8)
    spec = Augment(pad=4, flip=True)
    a = augment(images, spec, torch.Generator().manual_seed(5))
    b = augment(images, spec, torch.Generator().manual_seed(5))
    c = augment(images, spec, torch.Generator().manual_seed(6))
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert augment(images, Augment(), torch.Generator()) is images


def test_augment_crops_are_shifted_windows_of_the_padded_image():
    images = torch.randint(1, 256, (8, 2, 6, 6), dtype=torch.uint8)  # no zeros: padding shows
    p = 2
    out = augment(images, Augment(pad=p), torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (p, p, p, p))
    shifts = []
    for i in range(len(images)):
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if torch.equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 6])]
        assert found, f"sample {i} is not a crop"
        shifts.append(found[0])
    assert len(set(shifts)) > 1  # per-sample crops, not one crop for the batch


def test_augment_flip_mirrors_some_samples():
    images = torch.randint(0, 256, (32, 1, 4, 4), dtype=torch.uint8)
    out = augment(images, Augment(flip=True), torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, x.flip(2)) for o, x in zip(out, images)]
    same = [torch.equal(o, x) for o, x in zip(out, images)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 0 < sum(flipped) and 0 < sum(same)


def test_normalize_uses_per_channel_mean_and_std():
    images = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    x = normalize(images, [0.5, 0.2], [0.5, 0.1])
    assert x.dtype == torch.float32
    assert torch.allclose(x, torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]]), atol=1e-6)


def test_normalize_takes_prebuilt_tensors_on_the_device():
    images = torch.randint(0, 256, (4, 2, 3, 3), dtype=torch.uint8)
    mean_std = normalization([0.5, 0.2], [0.5, 0.1], "cpu")
    assert [t.shape for t in mean_std] == [(1, 2, 1, 1)] * 2 and mean_std[0].dtype == torch.float32
    assert torch.equal(normalize(images, *mean_std), normalize(images, [0.5, 0.2], [0.5, 0.1]))


def class_sorted_set(classes: int = 4, per_class: int = 500) -> ImageSet:
    """An image set sorted by class, as an imagefolder is: one very different brightness per class."""
    g = torch.Generator().manual_seed(0)
    brightness = torch.linspace(20, 230, classes).round().long()
    labels = torch.arange(classes).repeat_interleave(per_class)
    noise = torch.randint(-15, 16, (classes * per_class, 3, 4, 4), generator=g)
    return ImageSet((brightness[labels].view(-1, 1, 1, 1) + noise).to(torch.uint8), labels)


def test_sample_is_seeded_in_order_and_covers_every_class():
    data = ImageSet(class_sorted_set().images, torch.arange(2000))  # labels: the original position
    classes = torch.arange(4).repeat_interleave(500)
    part = data.sample(40, seed=3)
    assert len(part) == 40 and torch.equal(part.labels, part.labels.sort().values)  # original order
    assert torch.equal(part.images, data.images[part.labels])
    assert set(classes[part.labels].tolist()) == {0, 1, 2, 3}  # not the first 40: one class only
    assert torch.equal(data.sample(40, seed=3).labels, part.labels)  # seeded: the same every time
    assert not torch.equal(data.sample(40, seed=4).labels, part.labels)
    assert data.sample(None) is data and data.sample(5000) is data


@pytest.mark.parametrize("n", [0, -3])
def test_sample_of_no_images_is_an_error(n):
    data = ImageSet(torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.arange(10))
    with pytest.raises(SdpruneError, match=f"at least 1 image, got {n}"):
        data.sample(n)


def test_training_drops_a_ragged_last_batch_unless_it_is_the_only_one():
    assert drops_last(300, 128) and num_batches(300, 128, drops_last(300, 128)) == 2
    assert not drops_last(100, 128) and num_batches(100, 128, drops_last(100, 128)) == 1
    assert not drops_last(128, 128) and num_batches(128, 128, drops_last(128, 128)) == 1


def test_channel_stats_sample_every_class_of_a_class_sorted_set():
    """An imagefolder is sorted by class: the first max_images would be the first classes only."""
    data = class_sorted_set()
    x = data.images.float() / 255
    mean, std = channel_stats(data.images, max_images=400)  # a fifth of the set
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=0.02)  # the first 400: 0.08
    assert std == pytest.approx(x.transpose(0, 1).reshape(3, -1).std(dim=1).tolist(), rel=0.05)
    assert channel_stats(data.images, max_images=400) == (mean, std)  # a fixed subset, not a run's
    small = data.images[::50]  # fewer images than max_images: all of them, exactly
    assert channel_stats(small, max_images=400) == channel_stats(small, max_images=len(small))


def test_iterate_batches_shuffles_with_the_generator_and_drops_last():
    data = ImageSet(torch.zeros(10, 1, 1, 1, dtype=torch.uint8), torch.arange(10))
    plain = [y.tolist() for _, y in iterate_batches(data, 4)]
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    a = [y.tolist() for _, y in iterate_batches(data, 4, torch.Generator().manual_seed(3), drop_last=True)]
    b = [y.tolist() for _, y in iterate_batches(data, 4, torch.Generator().manual_seed(3), drop_last=True)]
    assert a == b and len(a) == 2 and len(set(sum(a, []))) == 8 and sum(a, []) != list(range(8))


def test_channel_stats_are_the_float64_mean_and_std():
    images = torch.randint(0, 256, (700, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    images[:, 1] //= 4  # channels that differ
    mean, std = channel_stats(images)  # 700 images: several chunks of the histogram
    x = images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(x.mean(dim=1).tolist(), abs=1e-6)
    assert std == pytest.approx(x.std(dim=1).tolist(), abs=1e-6)
