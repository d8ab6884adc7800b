"""The vectorize job's child processes (model/jobs/vectorize/processes.py): they give what the
method gives in process, and a Celery pool process — daemonic, with the project on sys.path only
while the app was imported — may start them."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from model.jobs.vectorize import VectorizeParams
from model.jobs.vectorize.processes import PROJECT_ROOT, analyse_gray, analysis_executor
from model.jobs.vectorize.run import analyse, grey
from synthetic.diagrams import render_diagram


def test_children_find_what_the_method_finds_in_process() -> None:
    image = render_diagram(7, long_side=600).image
    params = VectorizeParams()
    future = analysis_executor(2).submit(
        analyse_gray, grey(image), params.thresholds(), frozenset(params.primitives)
    )
    found, seconds = future.result(timeout=120)
    assert found == analyse(image, params)
    assert found and seconds > 0


def test_a_daemonic_pool_process_that_imported_the_app_from_its_folder_may_start_them(
    tmp_path: Path,
) -> None:
    # As in a Celery prefork child: the daemonic mark set, and the project's folder on sys.path
    # only while the app was imported (celery's cwd_in_path), the process elsewhere.
    script = textwrap.dedent(
        f"""
        import multiprocessing, sys
        sys.path.insert(0, {str(PROJECT_ROOT)!r})
        import numpy as np
        from model.jobs.vectorize.processes import analysis_executor, analyse_gray
        sys.path.remove({str(PROJECT_ROOT)!r})
        multiprocessing.current_process()._config["daemon"] = True
        blank = np.full((64, 64), 255, np.uint8)
        found, _ = analysis_executor(1).submit(analyse_gray, blank, {{}}, frozenset()).result(120)
        print("found", found)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "found []" in done.stdout


def test_grey_is_the_luma_the_method_reads() -> None:
    from PIL import Image

    rgb = Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8))
    assert grey(rgb).tolist() == [[76, 29]]
