"""The cluster job's method, measured (`python -m bench.cluster`, and a `make bench` part).

On testkit/cluster_corpus.py's families (re-drawn, turned +-20 degrees, scaled 0.6-1.5x,
mirrored, cropped, re-inked, on other paper; plus distractors in no family), for the development
seeds (1-3: settings are chosen on them) and held-out ones (1001-1004: only confirm):
- quality of each method: adjusted Rand index and NMI (scikit-learn; every unclustered item and
  every distractor counts as a singleton), share of distractors left unclustered; the method
  shipped before (exact shortlist, every pair verified one by one) as the baseline, same run;
- cost: features + embedding per item (against the raw embedder loop on the same images),
  then clustering once embedded, now and before, in the same run. 100 and 1,000 items are
  distinct (the seeds' items pooled). 10,000 distinct items would take ~15 min to draw and
  describe on a 2-core CPU, so at 10,000 the items repeat: the shortlist is computed whole
  (its cost does not depend on what the items show), but copies of one item would verify
  trivially, so the verification is the 1,000 distinct items' per-item cost times 10,000
  (said in the row). The baseline verifies at most VERIFY_SAMPLE pairs, evenly spread, and
  scales its time up (each pair is the same work). The method runs on the worker's inference
  threads (Settings.inference_threads(), as the job does); the same code on one thread is
  timed in the same run too ("1 thread").
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.jobs.cluster import DEFAULT_EMBED_MODEL, method
from model.jobs.cluster.job import EMBED_BATCH
from testkit.cluster_corpus import DISTRACTOR, HELD_OUT_SEEDS, build

# The corpora the settings are chosen on, and those that only confirm them (Round 6 chose on
# three dev seeds: one had let a choice fit its own few families)
DEV_SEEDS = (1, 2, 3)
VERIFY_SAMPLE = 1500  # pairs the baseline verifies at most per size (the rest extrapolated)
BASELINE = "before: exact shortlist 8, every pair verified, threshold 0.4"
PREVIOUS_THRESHOLD = 0.4  # what the previous method shipped with
HELD_OUT = tuple(HELD_OUT_SEEDS + n for n in range(1, 5))


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
    return load(models[name or DEFAULT_EMBED_MODEL], settings.inference_threads())


def featurize(
    images: list[Any], embedder: Any, raw: bool = True
) -> tuple[list[method.ClusterItem], dict]:
    """Items as the job computes them; timings of the local features and of embedding, and of
    the raw embedder loop on the same images (the job's overhead is measured against it)."""
    # One untimed call first: the runtime's first call (allocations, kernels chosen) would
    # otherwise count against whichever loop runs first (a third of a small model's time).
    embedder.embed(images[:EMBED_BATCH])
    t0 = time.perf_counter()
    items = [method.item_features(i, image) for i, image in enumerate(images)]
    t1 = time.perf_counter()
    for start in range(0, len(images), EMBED_BATCH):  # the job's batches
        vectors = embedder.embed(images[start : start + EMBED_BATCH])
        for item, vector in zip(items[start : start + EMBED_BATCH], vectors, strict=True):
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


def previous_shortlist(items: list[method.ClusterItem], k: int) -> dict[tuple[int, int], bool]:
    """The shortlist shipped before (the baseline): exact, all turns at full size."""
    n, k = len(items), min(k, len(items) - 1)
    emb = np.stack([i.upright.embedding for i in items]).astype(np.float32)
    base = np.stack([i.upright.layout for i in items]).astype(np.float32)
    variants = np.stack([i.turned for i in items])
    v = variants.shape[1]
    flat = variants.reshape(n * v, -1)
    pairs: dict[tuple[int, int], bool] = {}
    for start in range(0, n, method.BLOCK):
        rows = slice(start, min(n, start + method.BLOCK))
        layout = (base[rows] @ flat.T).reshape(-1, n, v)
        which = layout.argmax(axis=2)
        sims = (layout.max(axis=2) + emb[rows] @ emb.T) / 2
        local = np.arange(sims.shape[0])
        sims[local, local + start] = -np.inf
        for r, row in enumerate(np.argpartition(-sims, k - 1, axis=1)[:, :k]):
            for j in (int(x) for x in row):
                key = (min(start + r, j), max(start + r, j))
                pairs.setdefault(key, bool(which[r, j] >= v // 2))
    return dict(sorted(pairs.items()))


def previous_verify(
    items: list[method.ClusterItem], pairs: dict[tuple[int, int], bool]
) -> list[method.Edge]:
    """The verification shipped before (the baseline): similarity's check pair by pair, in the
    shortlist's orientation, then the other one if that fails."""
    from model.jobs.similarity.compare import verify_pair

    edges = []
    for (i, j), flipped in pairs.items():
        a, b = items[i], items[j]
        score = verify_pair(a.upright, b.mirrored if flipped else b.upright, 0.0).score
        if score <= 0:
            flipped = not flipped
            score = verify_pair(a.upright, b.mirrored if flipped else b.upright, 0.0).score
        if score > 0:
            edges.append(method.Edge(i, j, float(score), flipped))
    return edges


def threads() -> int:
    """The job's threads for the shortlist and verification (its worker's inference share)."""
    from model.settings import get_settings

    return get_settings().inference_threads()


def run_methods(
    items: list[method.ClusterItem], truth: list[int], k: int, link_cosine: float | None = None
) -> dict[str, Scores]:
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
    edges = previous_verify(items, previous_shortlist(items, k))
    labels = method.families(len(items), edges, PREVIOUS_THRESHOLD, single_linkage=True)
    out[BASELINE] = score(truth, labels, time.perf_counter() - t0)
    # The previous verification's edges at today's threshold (no time: the same edges)
    before_now = method.families(len(items), edges, single_linkage=True)
    out["before, threshold now"] = score(truth, before_now, 0.0)
    t0 = time.perf_counter()
    shipped = method.cluster(items, k, link_cosine=link_cosine, threads=threads())
    out[f"shortlist {k} + verified graph (shipped)"] = score(
        truth, shipped.labels, time.perf_counter() - t0
    )
    return out


def _cost(
    items: list[method.ClusterItem], k: int, most_verified: int, link_cosine: float | None
) -> dict[str, Any]:
    """Seconds of each stage on these items, now and before (the baseline's verification on an
    evenly spread sample of at most `most_verified` pairs, scaled up)."""
    now = method.cluster(items, k, link_cosine=link_cosine, threads=threads())
    seconds = now.seconds
    t3 = time.perf_counter()
    before = previous_shortlist(items, k)
    t4 = time.perf_counter()
    chosen = list(before.items())
    sample = chosen[:: max(1, len(chosen) // most_verified)]
    previous_verify(items, dict(sample))
    t5 = time.perf_counter()
    method.shortlist(items, k, threads=1)
    t6 = time.perf_counter()
    method.verify_edges(items, now.pairs, threads=1)
    t7 = time.perf_counter()
    return {
        "items": len(items),
        "threads": threads(),
        "pairs": len(now.pairs),
        "verified_pairs": now.verified,
        "shortlist_s": seconds["shortlist"],
        "verify_s": seconds["verify"],
        "families_s": seconds["embedding"] + seconds["families"],
        "total_s": sum(seconds.values()),
        "one_thread_shortlist_s": t6 - t5,
        "one_thread_verify_s": t7 - t6,
        "before_pairs": len(before),
        "before_shortlist_s": t4 - t3,
        "before_verify_s": (t5 - t4) * len(chosen) / max(1, len(sample)),
        "verify_extrapolated": False,
    }


def scaling(
    items: list[method.ClusterItem],
    sizes: list[int],
    k: int,
    link_cosine: float | None = None,
    most_verified: int = VERIFY_SAMPLE,
) -> list[dict[str, Any]]:
    """Cost once embedded, now and before, at each size (module docstring): distinct items up
    to len(items); beyond, repeated items with the verification scaled per item from the
    largest distinct size."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        if n <= len(items) or not rows:
            row = _cost(items[:n], k, most_verified, link_cosine)
        else:
            sample = [items[i % len(items)] for i in range(n)]
            per_item = rows[-1]
            t0 = time.perf_counter()
            pairs = method.shortlist(sample, k, threads=threads())
            t1 = time.perf_counter()
            previous_shortlist(sample, k)
            t2 = time.perf_counter()
            method.shortlist(sample, k, threads=1)
            t3 = time.perf_counter()
            grow = n / per_item["items"]
            row = {
                "items": n,
                "threads": threads(),
                "pairs": len(pairs),
                "verified_pairs": round(per_item["verified_pairs"] * grow),
                "shortlist_s": t1 - t0,
                "verify_s": per_item["verify_s"] * grow,
                "families_s": per_item["families_s"] * grow,
                "one_thread_shortlist_s": t3 - t2,
                "one_thread_verify_s": per_item["one_thread_verify_s"] * grow,
                "before_pairs": round(per_item["before_pairs"] * grow),
                "before_shortlist_s": t2 - t1,
                "before_verify_s": per_item["before_verify_s"] * grow,
                "verify_extrapolated": True,
            }
            row["total_s"] = row["shortlist_s"] + row["verify_s"] + row["families_s"]
        row["before_total_s"] = row["before_shortlist_s"] + row["before_verify_s"]
        row["one_thread_total_s"] = (
            row["one_thread_shortlist_s"] + row["one_thread_verify_s"] + row["families_s"]
        )
        rows.append(row)
        print(f"[cluster bench] {row}", flush=True)
    return rows


def means(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """The shipped method's mean ARI over the dev corpora and over the held-out ones."""
    kinds: dict[str, list[float]] = {"dev": [], "held-out": []}
    for corpus, scores in results.items():
        shipped = [s for name, s in scores.items() if name.endswith("(shipped)")]
        kind = "held-out" if "(held-out" in corpus else "dev"
        kinds[kind] += [s["ari"] for s in shipped]
    return "Shipped method, mean ARI: " + ", ".join(
        f"{kind} {np.mean(aris):.3f} over {len(aris)} corpora"
        for kind, aris in kinds.items()
        if aris
    )


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
    seeds: tuple[int, ...] = DEV_SEEDS + HELD_OUT,
) -> dict[str, Any]:
    """Every figure, JSON-ready; `markdown` prints them."""
    embedder = load_embedder()
    link_cosine = embedder.info.options.get("link_cosine")
    quality: dict[str, dict[str, dict[str, float]]] = {}
    timings: dict[str, float] = {}
    pooled: list[method.ClusterItem] = []  # every seed's items: distinct ones for scaling
    for n, seed in enumerate(seeds):
        print(f"[cluster bench] seed {seed}: drawing and describing items", flush=True)
        corpus = build(seed, families, distractors=distractors)
        items, measured = featurize(corpus.images, embedder, raw=n == 0)
        timings = timings or measured
        kind = "held-out" if seed >= HELD_OUT_SEEDS else "dev"
        name = f"seed {seed} ({kind}, {len(items)} items, {corpus.families} families)"
        scores = run_methods(items, corpus.labels, neighbours, link_cosine)
        quality[name] = {method_name: vars(s) for method_name, s in scores.items()}
        print(f"[cluster bench] {name}: {quality[name]}", flush=True)
        pooled += items
    return {
        "quality": quality,
        "per_item_ms": timings,
        "load_average": _load(),
        "scaling": scaling(pooled, list(sizes), neighbours, link_cosine),
        "threshold": method.DEFAULT_THRESHOLD,
        "neighbours": neighbours,
    }


def _load() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def markdown(result: dict[str, Any]) -> str:
    t = result["per_item_ms"]
    lines = [
        "### Cluster method (bench/cluster.py)",
        "",
        table(result["quality"]),
        "",
        means(result["quality"]),
        "",
        f"Per item: local features {t['local_features_ms']:.1f} ms, embedding "
        f"{t['embed_ms']:.1f} ms (raw embedder loop on the same images "
        f"{t['raw_embed_ms']:.1f} ms).",
        "",
        "| items | threads | now: pairs | verified | shortlist s | verify s | total s "
        "| 1 thread: shortlist s | verify s | total s | 1 thread / now "
        "| before: pairs | shortlist s | verify s | total s | before / now |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["scaling"]:
        mark = " (x)" if row["verify_extrapolated"] else ""
        lines.append(
            f"| {row['items']} | {row['threads']} | {row['pairs']} | "
            f"{row['verified_pairs']}{mark} | "
            f"{row['shortlist_s']:.2f} | {row['verify_s']:.2f}{mark} | {row['total_s']:.2f} | "
            f"{row['one_thread_shortlist_s']:.2f} | {row['one_thread_verify_s']:.2f}{mark} | "
            f"{row['one_thread_total_s']:.2f} | "
            f"{row['one_thread_total_s'] / max(row['total_s'], 1e-9):.2f}x | "
            f"{row['before_pairs']} | {row['before_shortlist_s']:.2f} | "
            f"{row['before_verify_s']:.2f}{mark} | {row['before_total_s']:.2f} | "
            f"{row['before_total_s'] / max(row['total_s'], 1e-9):.1f}x |"
        )
    lines += [
        "",
        "(x): verification scaled per item from the largest distinct size (module docstring). "
        f"Load average at the end (1, 5, 15 min): {result.get('load_average')}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    p.add_argument("--families", type=int, default=60)
    p.add_argument("--distractors", type=int, default=100)
    p.add_argument("--neighbours", type=int, default=method.DEFAULT_NEIGHBOURS)
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--seeds", default=",".join(str(s) for s in DEV_SEEDS + HELD_OUT))
    p.add_argument(
        "--write", action="store_true", help="also write bench/results/latest-cluster.{json,md}"
    )
    args = p.parse_args(argv)
    result = measure(
        args.families,
        args.distractors,
        args.neighbours,
        tuple(int(s) for s in args.sizes.split(",") if s),
        tuple(int(s) for s in args.seeds.split(",") if s),
    )
    print(markdown(result))
    if args.write:
        import json
        from pathlib import Path

        out = Path(__file__).parent / "results"
        (out / "latest-cluster.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "latest-cluster.md").write_text(markdown(result) + "\n")


if __name__ == "__main__":
    main()
