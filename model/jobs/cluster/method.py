"""Group items (illustrations) into families: the worker side of the cluster job (numpy, OpenCV,
scikit-learn; no torch — the embedder is handed in).

Chosen by measurement on bench/cluster.py's corpus (figures in docs/cluster.md):
1. Features per item, as the similarity job computes them for a region (features.describe):
   the embedder's pooled vector, a 16x16 layout thumbnail, RootSIFT keypoints, a small thumb;
   and the same for the item mirrored (SIFT is not mirror-invariant; printers flipped blocks).
2. Shortlist: each item's `neighbours` nearest items by the global descriptors (layout,
   embedding and a bag of words, words.py; either way round for the mirror), in blocks (no
   N x N matrix is kept): candidates from vectors projected to fewer dimensions, then scored
   exactly.
3. Verification: similarity's local-feature check (RANSAC similarity transform + photometric
   correlation) on each shortlisted pair, direct or mirrored, made cheap (verify.py: batched
   matching, the strongest keypoints, a prescreen; every shortlisted pair, since the families'
   join rule counts the edges between groups).
   A motif embedding calibrated for it (its card's `link_cosine`) also links the shortlisted
   pairs whose cosine reaches that value (embedding_edges).
4. Families: edges scoring at least `threshold` taken strongest first, joining two groups only
   where the edges between them are dense enough (`joinable`: average linkage on the graph,
   the larger group counted up to the shortlist's reach, so one stray edge does not merge two
   families, nor pull a lone item into a large one); groups smaller than `min_cluster_size`
   are unclustered. Asked for `clusters`: the strongest edges are kept until the graph has
   that many families (or no more edges that the join rule takes).
A pure embedding + HDBSCAN baseline (`embedding_hdbscan`) is kept for the benchmark.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image

from model.jobs.cluster.coarse import coarse_features
from model.jobs.cluster.verify import BLAS, Coarse, pool, verify_pairs
from model.jobs.cluster.words import codes, word_vectors
from model.jobs.similarity.features import (
    REGION_FEATURES,
    REGION_SIDE,
    ItemFeatures,
    describe,
    grey,
    layout_descriptor,
)

# Provenance's `method_version`: raised whenever the edges or families a corpus gets can change
# (2: verification in rounds of items, so the pairs skipped as joined differ; 3: the bag of
# words joins the shortlist, threshold 0.15; 4: the coarse keypoints' second chance; 5: the
# motif embedding (the job's default model) and its cosine as edges; 6: an embedding edge no
# longer joins two groups of EMBEDDING_GUARD items or more; 7: a join needs dense enough edges
# between the two groups (`joinable`), the guard's successor; every shortlisted pair verified;
# motif-embed retrained)
VERSION = 7
DEFAULT_NEIGHBOURS = 8
# A verified score (similarity's 0-1). Dev seed, shortlist with the bag of words (Round 3):
# 0.1 -> ARI 0.738 (2 distractors clustered), 0.15 -> 0.758, 0.2 -> 0.756, 0.3 -> 0.728
DEFAULT_THRESHOLD = 0.15
# Two groups join only where the edges between them number at least DENSITY x the smaller size
# x the larger one (counted up to the neighbours), and a lone item with no verified edge to a
# group only on LONE x the group's size (up to the neighbours) of embedding edges. Round 6,
# dev seeds 1-3, every pair verified, motif-embed's link_cosine 0.9: mean ARI 0.913 with
# neither, 0.919 with DENSITY 0.1, 0.917 with LONE 0.5 too, which keeps 95-100 % of the
# distractors out, not 91-99 %
DENSITY = 0.1
LONE = 0.5
BLOCK = 256  # rows of the similarity matrix computed at once
PROJECTED = 64  # dimensions of the shortlist's first pass (layout and embedding each)
COARSE = 16  # candidates per item that the first pass hands to the exact score
EXACT_ITEMS = 2000  # up to this many items one exact pass is cheap enough
# The layout thumbnail is compared with each item turned by these angles (degrees), and mirrored
TURNS = (-20.0, -10.0, 0.0, 10.0, 20.0)


@dataclass
class ClusterItem:
    """One item's features, upright and mirrored (embedding set by the caller)."""

    upright: ItemFeatures
    mirrored: ItemFeatures
    analysed: np.ndarray  # contrast-normalised grey at REGION_SIDE: what prototypes average
    # Layout descriptors of the item turned by each of TURNS, upright then mirrored
    turned: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    # Bag-of-words codes of the strongest keypoints (words.codes), upright and mirrored
    words: tuple[np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, np.int32), np.zeros(0, np.int32))
    )
    # Coarse keypoints (coarse.py), upright and mirrored: the pair check's second chance
    coarse: tuple[ItemFeatures, ItemFeatures] | None = None


@dataclass(frozen=True)
class Edge:
    a: int
    b: int
    score: float
    mirrored: bool
    # An embedding edge's cosine (it orders those edges, all at the threshold); 0: verified
    cosine: float = 0.0


def _turn(gray: np.ndarray, angle: float) -> np.ndarray:
    h, w = gray.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    return cv2.warpAffine(gray, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)


def item_features(index: int, image: Image.Image) -> ClusterItem:
    gray = grey(image)
    box = (0.0, 0.0, float(image.width), float(image.height))
    upright, analysed = describe(index, None, gray, box, 1.0, REGION_SIDE, REGION_FEATURES)
    flipped = np.ascontiguousarray(gray[:, ::-1])
    mirrored, _ = describe(index, None, flipped, box, 1.0, REGION_SIDE, REGION_FEATURES)
    sides = (analysed, np.ascontiguousarray(analysed[:, ::-1]))
    turned = np.stack([layout_descriptor(_turn(g, a)) for g in sides for a in TURNS])
    with BLAS.limit(limits=1):  # a tiny product: BLAS's threads would cost 100x its work
        hashed = (codes(upright.local.descriptors), codes(mirrored.local.descriptors))
    coarse = (coarse_features(upright, sides[0]), coarse_features(mirrored, sides[1]))
    return ClusterItem(upright, mirrored, analysed, turned.astype(np.float32), hashed, coarse)


def set_embedding(item: ClusterItem, vector: np.ndarray) -> None:
    item.upright.embedding = item.mirrored.embedding = vector.astype(np.float32)


def _projection(vectors: np.ndarray, dims: int) -> np.ndarray:
    """d x dims: the top right singular vectors of the (uncentred) rows, which keep their dot
    products best among projections of that size. Identity when dims >= d. From a sample of
    about 5 million values (20,000 layouts; 5,000 bags of words, which cost 0.8 s at 20,000)."""
    d = vectors.shape[1]
    if dims >= d:
        return np.eye(d, dtype=np.float32)
    sample = vectors[:: max(1, len(vectors) * d // 5_120_000)].astype(np.float32)
    with BLAS.limit(limits=1):  # tiny: threads on a busy CPU cost more than they give
        _, vecs = np.linalg.eigh((sample.T @ sample).astype(np.float64))
    return np.ascontiguousarray(vecs[:, ::-1][:, :dims]).astype(np.float32)


def _exact(
    terms: list[tuple[np.ndarray, np.ndarray]], rows: np.ndarray, cands: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact shortlist similarity of each row item with its candidates (rows x c), and the
    index of the candidate's best layout variant (the first term's)."""
    sims = np.zeros(cands.shape, np.float32)
    which = np.zeros(cands.shape, np.int64)
    for n, (base, variants) in enumerate(terms):
        scores = np.einsum("rd,rcvd->rcv", base[rows], variants[cands])
        if n == 0:
            which = scores.argmax(axis=2)
        sims += scores.max(axis=2)
    return sims / len(terms), which


def _terms(items: list[ClusterItem]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The shortlist's similarities, each (n x d queries, n x variants x d targets), averaged
    (each a max over the target's variants): the layout over turns and mirror (first: it
    decides the orientation), the embedding, the bag of words upright or mirrored."""
    upright = [i.upright for i in items]
    emb = np.stack([u.embedding for u in upright]).astype(np.float32)
    up, mirrored = word_vectors([i.words[0] for i in items], [i.words[1] for i in items])
    return [
        (
            np.stack([u.layout for u in upright]).astype(np.float32),
            np.stack([i.turned for i in items]).astype(np.float32),
        ),
        (emb, emb[:, None, :]),
        (up, np.stack([up, mirrored], axis=1)),
    ]


def shortlist(
    items: list[ClusterItem],
    k: int,
    check: Callable[[], None] = lambda: None,
    threads: int = 1,
) -> dict[tuple[int, int], bool]:
    """Unordered pairs (i < j) -> whether j is best seen mirrored: each item's k nearest others
    by the mean of three cosines: the best layout cosine over j's turns and mirror, the
    embedding's, and the bag of words' (words.py) with j upright or mirrored. By blocks of rows
    (memory O(BLOCK x N) per thread), on `threads` threads (each block's products on one BLAS
    thread: the reductions and partitions release the GIL too, so blocks side by side use the
    cores better than BLAS's threads inside one block). Past EXACT_ITEMS, two passes: the
    COARSE best candidates of each row by the same similarity on vectors projected to
    PROJECTED dimensions (the N x N x turns products are what cost at 10,000 items), then
    those scored exactly."""
    n = len(items)
    k = min(k, n - 1)
    if k <= 0:
        return {}
    with BLAS.limit(limits=1):  # small products: BLAS's threads cost more than they give
        terms = _terms(items)
    v = terms[0][1].shape[1]  # layout variants: the mirrored ones are the second half
    # Up to EXACT_ITEMS the first pass is exact (no projection) and hands on k candidates
    two_pass = n > EXACT_ITEMS
    small = []  # per term: projected queries, and targets turn-major (variants * n) x dims.T
    for base, variants in terms:
        count, d = variants.shape[1], variants.shape[2]
        # Turn-major: the max over variants is then taken across whole rows (fast), not
        # along a short strided axis
        flat = variants.transpose(1, 0, 2).reshape(count * n, d)
        if two_pass:
            to = _projection(variants.reshape(n * count, d), PROJECTED)
            base, flat = base @ to, flat @ to
        small.append((base, flat.T.copy(), count))
    coarse = min(n - 1, max(k, COARSE)) if two_pass else k

    def nearest(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One block of rows: their candidates, the k best of those, and which variant."""
        rows = np.arange(start, min(n, start + BLOCK))
        approx = np.zeros((len(rows), n), np.float32)
        for base, flat, count in small:
            approx += (base[rows] @ flat).reshape(len(rows), count, n).max(axis=1)
        approx[np.arange(len(rows)), rows] = -np.inf  # never an item with itself
        cands = np.argpartition(-approx, coarse - 1, axis=1)[:, :coarse]
        sims, which = _exact(terms, rows, cands)
        return rows, cands, np.argpartition(-sims, k - 1, axis=1)[:, :k], which

    pairs: dict[tuple[int, int], bool] = {}
    with BLAS.limit(limits=1), pool(threads) as workers:
        for rows, cands, best, which in workers.map(nearest, range(0, n, BLOCK)):
            check()
            for r, row in enumerate(best):
                i = int(rows[r])
                for c in (int(x) for x in row):
                    j = int(cands[r, c])
                    pairs.setdefault((min(i, j), max(i, j)), bool(which[r, c] >= v // 2))
    return dict(sorted(pairs.items()))


def verify_edges(
    items: list[ClusterItem],
    pairs: dict[tuple[int, int], bool],
    threshold: float | None = DEFAULT_THRESHOLD,
    check: Callable[[], None] = lambda: None,
    threads: int = 1,
) -> tuple[list[Edge], int]:
    """Similarity's verification of the pairs, i upright against j upright or mirrored
    (verify.py); the edges scoring above 0, and how many pairs were verified. With a
    `threshold`, pairs whose strongest keypoints hardly match (a prescreen) or that cannot
    reach it are not matched in full; None matches every pair in full. On
    `threads` threads; the edges do not depend on how many. Items with coarse features (all
    of them) get the coarse second chance (verify.second_chance)."""
    upright = [i.upright for i in items]
    mirrored = [i.mirrored for i in items]
    coarse = None
    if items and all(i.coarse is not None for i in items):
        coarse = Coarse([i.coarse[0] for i in items], [i.coarse[1] for i in items])  # type: ignore[index]
    scored, verified = verify_pairs(
        upright, mirrored, pairs, threshold, check=check, threads=threads, coarse=coarse
    )
    edges = [Edge(i, j, s.score, s.mirrored) for (i, j), s in sorted(scored.items())]
    return edges, verified


def embedding_edges(
    items: list[ClusterItem],
    pairs: dict[tuple[int, int], bool],
    edges: list[Edge],
    threshold: float,
    link_cosine: float | None,
) -> list[Edge]:
    """Edges at `threshold` (the weakest that joins) for the shortlisted pairs that no edge
    links at it and whose embeddings' cosine is at least `link_cosine`: copies the pair check
    misses (re-drawn hatching, smooth plates) that a motif embedding trained for it still
    tells apart. None (an embedding not calibrated for it, such as a detector's backbone,
    whose cosines are high for any two items): no edge. `families` joins them after the
    verified edges, highest cosine first, where the groups' edges are dense enough."""
    if link_cosine is None or not pairs:
        return []
    linked = {(e.a, e.b) for e in edges if e.score >= threshold}
    emb = np.stack([i.upright.embedding for i in items]).astype(np.float32)
    out = []
    for (i, j), flipped in pairs.items():
        cosine = float(emb[i] @ emb[j])
        if (i, j) not in linked and cosine >= link_cosine:
            out.append(Edge(i, j, threshold, flipped, cosine))
    return out


class Joined:
    """Union-find by size over the items (path halving): which are in one group by the edges
    joined so far (the families)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(self, ra: int, rb: int) -> None:
        """Merge the groups of two roots (found by `find`); the larger root stays."""
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def joinable(
    size_a: int,
    size_b: int,
    between: int,
    verified: int,
    reach: int,
    density: float = DENSITY,
    lone: float = LONE,
) -> bool:
    """Whether `between` edges (`verified` of them by the pair check) are enough to join groups
    of these sizes: DENSITY x the smaller size x the larger one, the larger counted up to
    `reach` (the shortlist's neighbours: no item has many more partners than that, so a family
    of 100 joins as one of `reach` would). Average linkage on the graph: two families of 4
    need 2 edges, so one stray edge does not merge them as it did under single linkage. A lone
    item with no verified edge to the group needs LONE x the group's size (up to `reach`) in
    embedding edges: a distractor is close to a member or two of a family of 8, a copy to
    more."""
    small, large = sorted((size_a, size_b))
    need = density * small * min(large, reach)
    if small == 1 and not verified:
        need = max(need, lone * min(large, reach))
    return between >= need - 1e-9


def families(
    n: int,
    edges: list[Edge],
    threshold: float = DEFAULT_THRESHOLD,
    min_cluster_size: int = 2,
    clusters: int | None = None,
    reach: int = DEFAULT_NEIGHBOURS,
    single_linkage: bool = False,
) -> np.ndarray:
    """Labels 0..F-1 (largest family first), -1 for unclustered items. Edges scoring at least
    `threshold` are taken strongest first (the verified ones, then the embedding edges, highest
    cosine first), each joining its two groups only where the edges between them are dense
    enough (`joinable`, `reach` the shortlist's neighbours). With `clusters`, a join that would
    merge two families (each at least min_cluster_size) is skipped once only that many are left
    (the join rule may leave more). `single_linkage`: every edge joins (the methods before
    Round 6, kept for the benchmark's baseline)."""
    kept = sorted(
        (e for e in edges if e.score >= threshold and e.a != e.b),
        key=lambda e: (-e.score, e.cosine > 0, -e.cosine, e.a, e.b),
    )
    # Edges between groups, all and verified, by root: merged into the larger group's as
    # groups join
    between: list[Counter[int]] = [Counter() for _ in range(n)]
    verified: list[Counter[int]] = [Counter() for _ in range(n)]
    for e in kept:
        for counts in (between,) if e.cosine else (between, verified):
            counts[e.a][e.b] += 1
            counts[e.b][e.a] += 1
    groups = Joined(n)
    size = groups.size
    big = 0  # families of at least min_cluster_size so far

    def is_big(count: int) -> int:
        return int(count >= min_cluster_size)

    rule = (0.0, 0.0) if single_linkage else (DENSITY, LONE)
    for edge in kept:
        ra, rb = groups.find(edge.a), groups.find(edge.b)
        if ra == rb:
            continue
        if not joinable(size[ra], size[rb], between[ra][rb], verified[ra][rb], reach, *rule):
            continue
        after = big - is_big(size[ra]) - is_big(size[rb]) + is_big(size[ra] + size[rb])
        if clusters is not None and after < big and after < clusters:
            continue
        groups.join(ra, rb)
        big = after
        root = groups.find(ra)
        for counts in (between, verified):
            _merge_neighbours(counts, root, rb if root == ra else ra)
    roots = [groups.find(i) for i in range(n)]
    counts: dict[int, int] = {}
    for root in roots:
        counts[root] = counts.get(root, 0) + 1
    big_roots = sorted(
        (r for r, c in counts.items() if c >= min_cluster_size), key=lambda r: (-counts[r], r)
    )
    number = {root: label for label, root in enumerate(big_roots)}
    return np.array([number.get(root, -1) for root in roots], dtype=np.int64)


def _merge_neighbours(between: list[Counter[int]], root: int, gone: int) -> None:
    """Group `gone` joined group `root`: its edges to other groups become root's."""
    for other, count in between[gone].items():
        if other != root:
            between[root][other] += count
            between[other][root] += count
            del between[other][gone]
    between[root].pop(gone, None)
    between[gone] = Counter()


@dataclass(frozen=True)
class Clustering:
    """What `cluster` made of the items, and the figures a result or a benchmark reports."""

    labels: np.ndarray  # per item: its family 0..F-1 (largest first), -1 unclustered
    edges: list[Edge]  # verified ones, then embedding ones: the prototypes align along them
    threshold: float  # the one joined at (resolved when asked for none)
    pairs: dict[tuple[int, int], bool]  # the shortlist (`shortlist`)
    verified: int  # shortlisted pairs the local-feature check ran on
    seconds: dict[str, float]  # per stage: shortlist, verify, embedding, families


def cluster(
    items: list[ClusterItem],
    neighbours: int = DEFAULT_NEIGHBOURS,
    threshold: float | None = None,
    min_cluster_size: int = 2,
    clusters: int | None = None,
    link_cosine: float | None = None,
    check: Callable[[], None] = lambda: None,
    threads: int = 1,
) -> Clustering:
    """The whole method once the items are described and embedded: shortlist, verification,
    embedding edges (`link_cosine`: the embedder card's, None for none), families. No
    `threshold`: DEFAULT_THRESHOLD, or with `clusters` any edge (the count stops merging)."""
    if threshold is None:
        threshold = 1e-6 if clusters else DEFAULT_THRESHOLD
    t0 = time.perf_counter()
    pairs = shortlist(items, neighbours, check, threads)
    t1 = time.perf_counter()
    # With a cluster count every edge's score orders the merges: verify every pair
    verify_at = None if clusters else threshold
    edges, verified = verify_edges(items, pairs, verify_at, check, threads)
    t2 = time.perf_counter()
    edges += embedding_edges(items, pairs, edges, threshold, link_cosine)
    t3 = time.perf_counter()
    labels = families(len(items), edges, threshold, min_cluster_size, clusters, neighbours)
    t4 = time.perf_counter()
    seconds = {"shortlist": t1 - t0, "verify": t2 - t1, "embedding": t3 - t2, "families": t4 - t3}
    return Clustering(labels, edges, threshold, pairs, verified, seconds)


def embedding_hdbscan(vectors: np.ndarray, min_cluster_size: int = 2) -> np.ndarray:
    """The baseline: HDBSCAN on the embeddings alone (euclidean on unit vectors)."""
    from sklearn.cluster import HDBSCAN

    return HDBSCAN(min_cluster_size=max(2, min_cluster_size), copy=True).fit_predict(vectors)
