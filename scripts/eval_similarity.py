"""Measure the similarity job end to end: a live stack (the same `python -m model stack` the
tests start), a local IIIF server, three synthetic manifests whose pages share some
illustrations (copies re-rendered at another scale, slightly rotated, on other paper with other
noise) and hold others of their own. Prints precision@1 on the copies, the lowest copy score,
the best score of anything that is not a copy, and the time per page — at region and at page
level, and again with the feature cache warm.

    .venv/bin/python scripts/eval_similarity.py [--pages 8] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.iiif_server import IiifServer
from testkit.similarity_corpus import (
    build,
    evaluate_pages,
    evaluate_regions,
)
from testkit.stack import start_stack


def layout(pages: int, seed: int) -> dict[str, list[list[tuple[int, bool]]]]:
    """alpha: originals only; beta: copies of half of alpha's pictures, new ones otherwise;
    gamma: copies from alpha and beta, new ones, and one picture twice (a copy within it)."""
    rng = np.random.default_rng(seed)
    next_art = 0

    def new() -> tuple[int, bool]:
        nonlocal next_art
        next_art += 1
        return next_art - 1, False

    alpha = [[new() for _ in range(int(rng.integers(1, 3)))] for _ in range(pages)]
    alpha_arts = [a for page in alpha for a, _ in page]
    beta_copies = list(rng.permutation(alpha_arts)[: len(alpha_arts) // 2])
    beta = []
    for _ in range(pages):
        entries = [(int(beta_copies.pop()), True)] if beta_copies else []
        beta.append(entries + [new() for _ in range(int(rng.integers(0 if entries else 1, 2)))])
    beta_arts = [a for page in beta for a, copy in page if not copy]
    left = [a for a in alpha_arts if all(a != b for page in beta for b, _ in page)]
    gamma_copies = left[: pages // 3] + beta_arts[: pages // 3]
    gamma = []
    for _ in range(pages - 2):
        entries = [(int(gamma_copies.pop()), True)] if gamma_copies else []
        gamma.append(entries + [new() for _ in range(int(rng.integers(0 if entries else 1, 2)))])
    twice = new()
    gamma.append([twice])
    gamma.append([(twice[0], True)])
    return {"alpha": alpha, "beta": beta, "gamma": gamma}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=8, help="pages per document")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dump", help="folder to write each run's result and ground truth to")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = IiifServer(Path(tmp) / "iiif")
        started = time.monotonic()
        plan = layout(args.pages, args.seed)
        corpus = build(server, "eval", plan, seed=args.seed)
        pages = sum(len(p) for p in plan.values())
        copies = sum(1 for i in corpus.instances if corpus.copies_of(i))
        print(
            f"corpus: 3 documents, {pages} pages, {len(corpus.instances)} illustrations, "
            f"{copies} of them with a copy elsewhere ({time.monotonic() - started:.0f} s)"
        )
        stack = start_stack(Path(tmp) / "stack")
        try:
            key = stack.create_key("eval", "--rate", "100000/second")
            api = stack.client(key)
            for label, params, evaluate in (
                ("region", {"level": "region"}, evaluate_regions),
                ("region, cache warm", {"level": "region"}, evaluate_regions),
                ("page", {"level": "page"}, evaluate_pages),
            ):
                body = {
                    "type": "similarity",
                    "input": {"documents": corpus.manifests},
                    "params": {**params, "top_k": 100},
                }
                t0 = time.monotonic()
                end = api.wait(api.submit_ok(body), timeout_s=1800)
                wall = time.monotonic() - t0
                assert end["state"] == "SUCCEEDED", end
                result = end["result"]
                report = evaluate(corpus, result["pairs"])
                timings = result["provenance"]["timings"]
                print(
                    f"\n[{label}] precision@1 {report.precision_at_1:.3f} "
                    f"({report.hits}/{report.queries}); lowest copy score {report.min_copy:.3f}, "
                    f"best non-copy score {report.best_distinct:.3f}, margin {report.margin:.3f}; "
                    f"{report.above_distinct}/{len(report.copy_scores)} copies score above every "
                    f"non-copy; median copy score {np.median(report.copy_scores or [0]):.3f}"
                )
                print(
                    f"  {wall:.1f} s for {pages} pages = {wall / pages:.2f} s/page end to end; "
                    f"feature stage {timings.get('per_page_s', 0):.3f} s/page, comparison "
                    f"{timings.get('compare_s', 0):.2f} s, cache {result['provenance']['cache']}"
                )
                print(f"  worker timings {timings}")
                for line in report.details:
                    if "MISS" in line:
                        print(f"  {line}")
                if args.dump:
                    name = label.replace(" ", "_").replace(",", "")
                    dump = {
                        "corpus": [i.__dict__ for i in corpus.instances],
                        "canvases": {f"{d}:{p}": c for (d, p), c in corpus.canvas_ids.items()},
                        "result": result,
                    }
                    (Path(args.dump) / f"{name}.json").write_text(json.dumps(dump))
        finally:
            stack.stop()
            server.stop()


if __name__ == "__main__":
    main()
