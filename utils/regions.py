"""The face-region label maps of a dataset (``regions/<image stem>.png``), and what scores them.

Labels: 0 background, 1 skin/other, 2 mouth, 3 eyes. ``metrics.py --masks`` and train.py's
evaluation score PSNR and SSIM inside the mouth and eye regions of the views where a region
has at least ``MIN_REGION_PIXELS`` pixels.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

REGIONS = {"mouth": 2, "eyes": 3}  # label values of the region maps
MIN_REGION_PIXELS = 16  # fewer pixels than this: the view does not score that region


class RegionMapError(RuntimeError):
    """A region map that cannot be used (the message names the file and the problem)."""


class RegionMaps:
    """Label maps of one dataset, ``<folder>/<image name>`` (the render's file name), read on
    demand."""

    def __init__(self, folder: str):
        self.folder = folder

    def labels(self, name: str, height: int, width: int) -> np.ndarray | None:
        """(height, width) uint8 labels for a render, or None when the map is missing.

        A map at the dataset's full size is resized (nearest label) to a render made at a lower
        --resolution; a map of another aspect ratio is an error naming the file.
        """
        path = os.path.join(self.folder, name)
        if not os.path.isfile(path):
            return None
        arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise RegionMapError(f"cannot read region map {path} (corrupt or not a PNG)")
        if arr.ndim == 3:
            if not all(np.array_equal(arr[:, :, 0], arr[:, :, i]) for i in range(1, arr.shape[2])):
                raise RegionMapError(f"region map {path} has {arr.shape[2]} different "
                                     f"channels; expected one channel of labels")
            arr = arr[:, :, 0]
        h0, w0 = arr.shape
        if (h0, w0) != (height, width):
            if abs(h0 * width / w0 - height) > 1.0:
                raise RegionMapError(f"region map {path} is {w0}x{h0}, which does not scale to "
                                     f"the {width}x{height} render (width x height)")
            arr = cv2.resize(arr, (width, height), interpolation=cv2.INTER_NEAREST)
        return arr
