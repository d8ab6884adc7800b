"""Local features and geometric verification: SIFT keypoints, ratio-test matches, and a RANSAC
similarity transform (rotation + uniform scale + translation) between two images.

A copy of a drawing — redrawn at another scale, turned a little, on other paper — keeps the
relative layout of its keypoints, so many matches agree on one transform; two merely similar
drawings (same kind, same texture) give matches that agree on none. The inlier count is what
separates them. OpenCV only (it ships with ultralytics); no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

RATIO = 0.8  # Lowe's ratio test
MIN_MATCHES = 4  # below this no transform is estimated
# A copy is rescaled, not squashed: transforms outside this scale range are not copies.
SCALE_RANGE = (1 / 6, 6.0)
CONTRAST_THRESHOLD = 0.01
RANSAC_SEED = 20240611


@dataclass
class LocalFeatures:
    """Keypoint positions (N x 2, in the pixels of the image they came from) and RootSIFT
    descriptors (N x 128, float32, L2-normalised); `size` is that image's (width, height)."""

    points: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True)
class Verification:
    inliers: int
    matches: int
    scale: float = 0.0
    angle: float = 0.0  # degrees
    transform: tuple[float, ...] | None = None  # 2x3 affine, row-major (b -> a)
    # Inlier keypoint positions in a and in b (each n x 2)
    inlier_points: tuple[np.ndarray, np.ndarray] = field(
        default=(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)), compare=False
    )


def _root_sift(descriptors: np.ndarray) -> np.ndarray:
    """Hellinger kernel on SIFT (Arandjelovic & Zisserman 2012): L1, sqrt; then unit L2."""
    d = descriptors.astype(np.float32)
    d /= d.sum(axis=1, keepdims=True) + 1e-7
    return np.sqrt(d)


def extract(gray: np.ndarray, max_features: int, min_size: float = 0.0) -> LocalFeatures:
    """SIFT on a contrast-normalised grayscale uint8 image: the `max_features` strongest
    keypoints at least `min_size` pixels across. The contrast threshold is a quarter of
    OpenCV's default so that smooth, faint pictures (washed plates) still get keypoints."""
    sift = cv2.SIFT_create(contrastThreshold=CONTRAST_THRESHOLD)
    keypoints = [k for k in sift.detect(gray, None) if k.size >= min_size]
    # A total order (SIFT's threads may list keypoints in any order): the same image always
    # gives the same keypoints, in the same order, hence the same RANSAC samples.
    keypoints = sorted(keypoints, key=lambda k: (-k.response, k.pt[1], k.pt[0], k.size, k.angle))[
        :max_features
    ]
    height, width = gray.shape[:2]
    descriptors = None
    if keypoints:
        keypoints, descriptors = sift.compute(gray, keypoints)
    if descriptors is None or not keypoints:
        return LocalFeatures(
            np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), (width, height)
        )
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32)
    return LocalFeatures(points, _root_sift(descriptors), (width, height))


def _matches(a: LocalFeatures, b: LocalFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of matches that pass the ratio test and are mutual nearest neighbours.

    Descriptors are unit vectors, so distances come from one matrix product: OpenCV's (numpy's
    multi-threaded BLAS is several times slower on these small products when the CPU is busy).
    """
    if len(b) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sims = cv2.gemm(a.descriptors, b.descriptors, 1.0, None, 0.0, flags=cv2.GEMM_2_T)
    rows = np.arange(len(sims))
    best = sims.argmax(axis=1)
    s1 = sims[rows, best]
    mutual = sims.argmax(axis=0)[best] == rows
    sims[rows, best] = -np.inf
    s2 = sims.max(axis=1)
    d1 = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * s1))
    d2 = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * s2))
    keep = (d1 < RATIO * d2) & mutual
    return rows[keep], best[keep]


def verify(a: LocalFeatures, b: LocalFeatures, threshold_px: float) -> Verification:
    """Inliers of the best similarity transform mapping b's keypoints onto a's (RANSAC)."""
    if len(a) < MIN_MATCHES or len(b) < MIN_MATCHES:
        return Verification(0, 0)
    ia, ib = _matches(a, b)
    if len(ia) < MIN_MATCHES:
        return Verification(0, len(ia))
    cv2.setRNGSeed(RANSAC_SEED)  # the same two items always give the same answer
    matrix, mask = cv2.estimateAffinePartial2D(
        b.points[ib],
        a.points[ia],
        method=cv2.RANSAC,
        ransacReprojThreshold=threshold_px,
        maxIters=2000,
        confidence=0.995,
    )
    if matrix is None or mask is None:
        return Verification(0, len(ia))
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    angle = float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return Verification(0, len(ia), scale, angle)
    keep = mask.ravel().astype(bool)
    return Verification(
        int(keep.sum()),
        len(ia),
        scale,
        angle,
        tuple(float(v) for v in matrix.ravel()),
        (a.points[ia[keep]], b.points[ib[keep]]),
    )
