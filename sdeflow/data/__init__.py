"""Training data: scikit-learn's bundled digits, 2-D toys, folders of images and .npy/.npz arrays.

Every loader returns a :class:`Dataset`: a float32 tensor ``x`` of shape ``(N, *shape)``, optional
integer ``labels`` and the affine ``scale``/``shift`` that mapped the raw values to the training range
(``x = raw * scale + shift``), so samples can be mapped back. Scaling: images (digits, folders) go
to [-1, 1]; the toys are generated at unit scale; arrays are used as they are unless
``standardize=True`` (per-dataset mean 0, overall standard deviation 1).
"""

from .datasets import DATASETS, Dataset, array_file, digits, image_folder, load
from .toys import TOYS, checkerboard, eight_gaussians, moons, swiss_roll

__all__ = ["DATASETS", "Dataset", "TOYS", "array_file", "checkerboard", "digits", "eight_gaussians", "image_folder",
           "load", "moons", "swiss_roll"]
