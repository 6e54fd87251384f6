"""Image sets: readers for every supported dataset, the validation slice, normalisation,
batching and augmentation. Knows nothing of models or training."""

from sdprune.data.bundle import DATASETS, DataBundle, data_for_checkpoint, load_data
from sdprune.data.images import ImageSet

__all__ = ["DATASETS", "DataBundle", "ImageSet", "data_for_checkpoint", "load_data"]
