"""Datasets (TFDS) and the input pipeline of section 3.

`get_dataset` gives one split of "synthetic" (drawn here, no download), "tiny_imagenet" (a local copy
or the official download), a TFDS catalog dataset or an ImageFolder directory, as a random-access
source; `load_batch` and `compute_mean_image` read it at the size `image_size_for` an architecture;
`preprocess` crops and flips (section 3); `tiny_imagenet.boxes` gives Tiny ImageNet's object boxes;
`few_shot` draws N images per class (section 5.2); `checks` checks a dataset before training;
`model_inputs` turns any image into a model input as evaluation does.
"""
from zf_jax.data import checks, few_shot, model_inputs, preprocess, synthetic, tiny_imagenet
from zf_jax.data.datasets import (
                                  Dataset,
                                  ImageFolderSource,
                                  compute_mean_image,
                                  encoded,
                                  get_dataset,
                                  image_size_for,
                                  load_batch,
)
from zf_jax.data.tiny_imagenet import boxes

__all__ = ["Dataset", "ImageFolderSource", "boxes", "checks", "compute_mean_image", "encoded", "few_shot",
           "get_dataset",
           "image_size_for", "load_batch", "model_inputs", "preprocess", "synthetic", "tiny_imagenet"]
