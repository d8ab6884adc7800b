"""Similarity of pages and illustrations across documents (the `similarity` job).

- `embedders`: pluggable global feature extractors (model cards with task "embed"); worker only.
- `features`: what is kept of a page or region: global descriptor, SIFT keypoints, a small
  grey thumbnail for the photometric check.
- `local`: SIFT matching and RANSAC verification.
- `compare`: shortlist by global descriptor, verify, score, top-k per document pair.
- `cache`: page features cached in Redis by content hash + model sha256.
"""
