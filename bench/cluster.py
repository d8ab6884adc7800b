"""The cluster job's method, measured (`python -m bench.cluster`, and a `make bench` part).

On testkit/cluster_corpus.py's families (re-drawn, turned +-20 degrees, scaled 0.6-1.5x,
mirrored, cropped, re-inked, on other paper; plus distractors in no family), for a development
seed and a held-out one:
- quality of each method: adjusted Rand index and NMI (scikit-learn; every unclustered item and
  every distractor counts as a singleton), share of distractors left unclustered;
- cost: features + embedding per item (against the raw embedder loop on the same images),
  then clustering at 100, 1,000 and 10,000 items once embedded. 10,000 distinct synthetic items
  would take ~15 min to draw on a 2-core CPU, so the large sizes repeat the measured items
  (every copy its own index; the shortlist is exact and whole). Past VERIFY_SAMPLE shortlisted
  pairs an evenly spread sample is verified and its time scaled up: each pair is the same work.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.jobs.cluster import method
from testkit.cluster_corpus import DISTRACTOR, HELD_OUT_SEEDS, build

DEV_SEED = 1
VERIFY_SAMPLE = 6000  # pairs verified at most per scaling size (the rest extrapolated)
HELD_OUT_SEED = HELD_OUT_SEEDS + 1


@dataclass
class Scores:
    ari: float
    nmi: float
    distractors_unclustered: float
    families_found: int
    seconds: float


def singletons(labels: np.ndarray) -> np.ndarray:
    """-1 (no family) -> a label of its own: ARI/NMI see each such item as a singleton."""
    out = labels.copy()
    lone = np.flatnonzero(out < 0)
    out[lone] = out.max(initial=0) + 1 + np.arange(len(lone))
    return out


def score(truth: list[int], predicted: np.ndarray, seconds: float) -> Scores:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t, p = singletons(np.array(truth)), singletons(predicted)
    distractor = np.array(truth) == DISTRACTOR
    return Scores(
        ari=float(adjusted_rand_score(t, p)),
        nmi=float(normalized_mutual_info_score(t, p)),
        distractors_unclustered=float((predicted[distractor] < 0).mean()),
        families_found=int(predicted.max(initial=-1) + 1),
        seconds=seconds,
    )


def load_embedder(name: str | None = None) -> Any:
    from model.inference.registry import discover
    from model.jobs.similarity.embedders import load_embedder as load
    from model.settings import get_settings

    settings = get_settings()
    models = discover(settings.model_dirs)
    return load(models[name or settings.similarity.embed_model], settings.inference_threads())


def featurize(
    images: list[Any], embedder: Any, raw: bool = True
) -> tuple[list[method.ClusterItem], dict]:
    """Items as the job computes them; timings of the local features and of embedding, and of
    the raw embedder loop on the same images (the job's overhead is measured against it)."""
    t0 = time.perf_counter()
    items = [method.item_features(i, image) for i, image in enumerate(images)]
    t1 = time.perf_counter()
    for start in range(0, len(images), 32):
        vectors = embedder.embed(images[start : start + 32])
        for item, vector in zip(items[start : start + 32], vectors, strict=True):
            method.set_embedding(item, vector)
    t2 = time.perf_counter()
    for start in range(0, len(images) if raw else 0, 32):
        embedder.embed(images[start : start + 32])
    t3 = time.perf_counter()
    n = max(1, len(images))
    return items, {
        "local_features_ms": 1000 * (t1 - t0) / n,
        "embed_ms": 1000 * (t2 - t1) / n,
        **({"raw_embed_ms": 1000 * (t3 - t2) / n} if raw else {}),
    }


def run_methods(items: list[method.ClusterItem], truth: list[int], k: int) -> dict[str, Scores]:
    out: dict[str, Scores] = {}
    emb = np.stack([i.upright.embedding for i in items])
    t0 = time.perf_counter()
    out["embedding + HDBSCAN"] = score(
        truth, method.embedding_hdbscan(emb), time.perf_counter() - t0
    )
    joined = np.hstack([emb, np.stack([i.upright.layout for i in items])])
    t0 = time.perf_counter()
    out["embedding+layout + HDBSCAN"] = score(
        truth, method.embedding_hdbscan(joined), time.perf_counter() - t0
    )
    t0 = time.perf_counter()
    pairs = method.shortlist(items, k)
    edges = method.verify_edges(items, pairs)
    labels = method.families(len(items), edges)
    out[f"shortlist {k} + verified graph"] = score(truth, labels, time.perf_counter() - t0)
    return out


def scaling(
    items: list[method.ClusterItem], sizes: list[int], k: int, most_verified: int = VERIFY_SAMPLE
) -> list[dict[str, Any]]:
    """Cost once embedded. Beyond `most_verified` shortlisted pairs, an evenly spread sample of
    that many is verified and the verification time scaled up (each pair costs the same work;
    said in the row): the shortlist and the families are always computed whole."""
    rows = []
    for n in sizes:
        sample = [items[i % len(items)] for i in range(n)]
        t0 = time.perf_counter()
        pairs = method.shortlist(sample, k)
        t1 = time.perf_counter()
        chosen = list(pairs.items())
        step = max(1, len(chosen) // most_verified)
        edges = method.verify_edges(sample, dict(chosen[::step]))
        t2 = time.perf_counter()
        verify_s = (t2 - t1) * len(chosen) / max(1, len(chosen[::step]))
        method.families(n, edges)
        t3 = time.perf_counter()
        rows.append(
            {
                "items": n,
                "pairs": len(pairs),
                "verified_pairs": len(chosen[::step]),
                "shortlist_s": t1 - t0,
                "verify_s": verify_s,
                "families_s": t3 - t2,
                "total_s": (t1 - t0) + verify_s + (t3 - t2),
            }
        )
        print(f"[cluster bench] {rows[-1]}", flush=True)
    return rows


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| corpus | method | ARI | NMI | distractors unclustered | families found | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for corpus, scores in results.items():
        for name, s in scores.items():
            lines.append(
                f"| {corpus} | {name} | {s['ari']:.3f} | {s['nmi']:.3f} | "
                f"{s['distractors_unclustered']:.0%} | {s['families_found']} | "
                f"{s['seconds']:.1f} |"
            )
    return "\n".join(lines)


def measure(
    families: int = 60,
    distractors: int = 100,
    neighbours: int = method.DEFAULT_NEIGHBOURS,
    sizes: tuple[int, ...] = (100, 1000, 10000),
    seeds: tuple[int, ...] = (DEV_SEED, HELD_OUT_SEED),
) -> dict[str, Any]:
    """Every figure, JSON-ready; `markdown` prints them."""
    embedder = load_embedder()
    quality: dict[str, dict[str, dict[str, float]]] = {}
    timings: dict[str, float] = {}
    kept: list[method.ClusterItem] = []
    for n, seed in enumerate(seeds):
        print(f"[cluster bench] seed {seed}: drawing and describing items", flush=True)
        corpus = build(seed, families, distractors=distractors)
        items, measured = featurize(corpus.images, embedder, raw=n == 0)
        timings = timings or measured
        kind = "held-out" if seed >= HELD_OUT_SEEDS else "dev"
        name = f"seed {seed} ({kind}, {len(items)} items, {corpus.families} families)"
        scores = run_methods(items, corpus.labels, neighbours)
        quality[name] = {method_name: vars(s) for method_name, s in scores.items()}
        print(f"[cluster bench] {name}: {quality[name]}", flush=True)
        kept = items
    return {
        "quality": quality,
        "per_item_ms": timings,
        "scaling": scaling(kept, list(sizes), neighbours),
        "threshold": method.DEFAULT_THRESHOLD,
        "neighbours": neighbours,
    }


def markdown(result: dict[str, Any]) -> str:
    t = result["per_item_ms"]
    lines = [
        "### Cluster method (bench/cluster.py)",
        "",
        table(result["quality"]),
        "",
        f"Per item: local features {t['local_features_ms']:.1f} ms, embedding "
        f"{t['embed_ms']:.1f} ms (raw embedder loop on the same images "
        f"{t['raw_embed_ms']:.1f} ms).",
        "",
        "| items | shortlisted pairs | verified (timed) | shortlist s | verify s | families s "
        "| total s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["scaling"]:
        lines.append(
            f"| {row['items']} | {row['pairs']} | {row['verified_pairs']} | "
            f"{row['shortlist_s']:.2f} | {row['verify_s']:.2f} | {row['families_s']:.2f} | "
            f"{row['total_s']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    p.add_argument("--families", type=int, default=60)
    p.add_argument("--distractors", type=int, default=100)
    p.add_argument("--neighbours", type=int, default=method.DEFAULT_NEIGHBOURS)
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--seeds", default=f"{DEV_SEED},{HELD_OUT_SEED}")
    args = p.parse_args(argv)
    result = measure(
        args.families,
        args.distractors,
        args.neighbours,
        tuple(int(s) for s in args.sizes.split(",") if s),
        tuple(int(s) for s in args.seeds.split(",") if s),
    )
    print(markdown(result))


if __name__ == "__main__":
    main()
