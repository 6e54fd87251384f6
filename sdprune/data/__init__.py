"""Image sets: readers for every supported dataset (in memory, or streamed from image
folders), the validation slice, normalisation, batching and augmentation. Knows nothing of models or training."""

from sdprune.data.bundle import DataBundle, data_for_checkpoint, load_data
from sdprune.data.folder import FolderSet
from sdprune.data.images import ImageSet

__all__ = ["DataBundle", "FolderSet", "ImageSet", "data_for_checkpoint", "load_data"]
