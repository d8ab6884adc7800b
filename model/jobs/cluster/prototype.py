"""A family's prototype image, in the spirit of DTI clustering (Monnier et al. 2020) without
learning: every member aligned onto one reference member and averaged.

The reference is the family's medoid (the member with the most verified evidence to the others).
Each member is aligned to it by the similarity transform RANSAC finds between their SIFT
keypoints (model/jobs/similarity/local.py), mirrored when that fits better; what the members share
stays sharp in the average, what differs (paper, stains, strokes of one copy) fades. A member
that cannot be aligned is left out of the average and scores 0. A member's score is the
normalised cross-correlation of it, aligned, with the prototype (0-1): its cohesion with the family.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from model.jobs.cluster.method import ClusterItem, Edge
from model.jobs.similarity.compare import verify_pair

MIN_VALID = 0.3  # a pixel of the prototype needs this share of the aligned members to cover it


@dataclass
class Prototype:
    png: bytes
    medoid: int  # index into the members list
    scores: list[float]  # per member, 0-1
    aligned: int  # members that took part in the average

    @property
    def cohesion(self) -> float:
        return float(np.mean(self.scores)) if self.scores else 0.0


def medoid(members: list[int], edges: list[Edge]) -> int:
    """Position in `members` of the one with the largest sum of edge scores within the family."""
    inside = set(members)
    total = dict.fromkeys(members, 0.0)
    for e in edges:
        if e.a in inside and e.b in inside:
            total[e.a] += e.score
            total[e.b] += e.score
    best = max(members, key=lambda m: (total[m], -m))
    return members.index(best)


def _alignment(reference: ClusterItem, member: ClusterItem) -> tuple[np.ndarray, bool] | None:
    """The 2x3 transform member -> reference (analysed pixels), and whether it is mirrored."""
    best = None
    for flipped, side in ((False, member.upright), (True, member.mirrored)):
        match = verify_pair(reference.upright, side, 0.0)
        if match.score > 0 and (best is None or match.score > best[0]):
            matrix = np.array(match.verification.transform, np.float32).reshape(2, 3)
            best = (match.score, matrix, flipped)
    return None if best is None else (best[1], best[2])


def _darkness(gray: np.ndarray) -> np.ndarray:
    """Ink as 0-1 (paper 0): the analysed image is contrast-normalised, so 255 is paper."""
    return 1.0 - gray.astype(np.float32) / 255.0


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    if mask.sum() < 100:
        return 0.0
    pa, pb = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    denom = float(np.sqrt((pa * pa).sum() * (pb * pb).sum()))
    return max(0.0, float((pa * pb).sum()) / denom) if denom > 1e-6 else 0.0


def build(items: list[ClusterItem], members: list[int], edges: list[Edge]) -> Prototype:
    """The prototype of the family `members` (indices into `items`) as a PNG (grey)."""
    ref_pos = medoid(members, edges)
    reference = items[members[ref_pos]]
    height, width = reference.analysed.shape
    total = np.zeros((height, width), np.float32)
    cover = np.zeros((height, width), np.float32)
    warped: list[tuple[np.ndarray, np.ndarray] | None] = []
    for position, index in enumerate(members):
        item = items[index]
        if position == ref_pos:
            ink, valid = _darkness(item.analysed), np.ones((height, width), bool)
        else:
            found = _alignment(reference, item)
            if found is None:
                warped.append(None)
                continue
            matrix, flipped = found
            source = item.analysed[:, ::-1] if flipped else item.analysed
            source = np.ascontiguousarray(source)
            ink = cv2.warpAffine(_darkness(source), matrix, (width, height), flags=cv2.INTER_LINEAR)
            ones = np.ones(source.shape, np.float32)
            valid = cv2.warpAffine(ones, matrix, (width, height), flags=cv2.INTER_NEAREST) > 0.5
        total += np.where(valid, ink, 0.0)
        cover += valid
        warped.append((ink, valid))
    aligned = sum(w is not None for w in warped)
    enough = cover >= max(1.0, MIN_VALID * aligned)
    mean = np.where(enough, total / np.maximum(cover, 1.0), 0.0)
    # Stretch the mean's ink to the full range: an average of n copies is paler than any one.
    top = float(np.percentile(mean[enough], 99.5)) if enough.any() else 1.0
    picture = 255.0 * (1.0 - np.clip(mean / max(top, 1e-3), 0.0, 1.0))
    scores = [0.0 if w is None else round(_ncc(w[0], mean, w[1] & enough), 4) for w in warped]
    buffer = io.BytesIO()
    Image.fromarray(picture.astype(np.uint8), "L").save(buffer, "PNG", optimize=True)
    return Prototype(buffer.getvalue(), ref_pos, scores, aligned)
