"""The cluster job's coarse keypoints: SIFT on an item blurred until fine hatching is tone.

An engraving's or plate's hatching repeats one small pattern, so its fine RootSIFT descriptors
are ambiguous and Lowe's ratio test discards most true matches between two copies. Blurred
(Gaussian, BLUR pixels at the analysed size), the hatching becomes tone and the keypoints sit on
the picture's larger shapes, whose descriptors are distinct. Used only as a second chance for
pairs the fine keypoints did not join (verify.second_chance). Dev seed (docs/cluster.md, Round
4): sigma 2 joined 33 of the 246 same-family pairs that the fine check missed, sigma 3 or a
half-size copy 24.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from model.jobs.similarity.features import ItemFeatures
from model.jobs.similarity.local import extract

BLUR = 2.0  # Gaussian sigma, in analysed pixels
KEYPOINTS = 128  # the strongest kept (a blurred item has about 130)


def coarse_features(item: ItemFeatures, analysed: np.ndarray) -> ItemFeatures:
    """`item` with its local features replaced by coarse ones from `analysed`, the
    contrast-normalised grey image its features came from (same pixels, same orientation)."""
    blurred = cv2.GaussianBlur(analysed, (0, 0), BLUR)
    return dataclasses.replace(item, local=extract(blurred, KEYPOINTS))
