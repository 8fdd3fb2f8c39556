"""Datasets (TFDS) and the input pipeline of section 3."""
