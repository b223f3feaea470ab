import pytest
import torch

from dynopool_nas import DigitsDataset


def test_digits_split_is_deterministic_disjoint_and_complete():
    train, val = DigitsDataset("train", image_size=16), DigitsDataset("val", image_size=16)
    assert len(train) + len(val) == 1797 and len(val) == round(1797 * 0.2)
    again = DigitsDataset("val", image_size=16)
    assert torch.equal(val.images, again.images) and torch.equal(val.labels, again.labels)
    train_rows = {tuple(row.tolist()) for row in train.images.flatten(1)}
    assert not any(tuple(row.tolist()) in train_rows for row in val.images.flatten(1)[:50])
    image, label = train[0]
    assert image.shape == (1, 16, 16) and 0 <= label < 10
    assert set(train.labels.tolist()) == set(range(10))


def test_digits_resize_to_non_square_sizes_and_different_seeds_split_differently():
    data = DigitsDataset("train", image_size=(12, 20), seed=3)
    assert data[0][0].shape == (1, 12, 20)
    assert not torch.equal(DigitsDataset("val", seed=1).labels, DigitsDataset("val", seed=2).labels)


@pytest.mark.parametrize(
    "kwargs", [{"split": "test"}, {"val_fraction": 1.0}, {"image_size": 0}, {"image_size": (1, 2, 3)}]
)
def test_digits_refuse_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        DigitsDataset(**kwargs)
