"""The course site builds from executed notebooks without internet: no page loads anything from
another host, math is typeset by the MathJax the site carries, widgets without a kernel show
their HTML snapshot or nothing. (tests/test_browser.py opens the real site in chromium.)"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import nbformat
import pytest
from matplotlib.figure import Figure
from tutorials import REPO, TUTORIALS, TUTORIALS_DIR

from privkit import course

WIDGET = "application/vnd.jupyter.widget-view+json"


def _png() -> str:
    buffer = io.BytesIO()
    fig = Figure(figsize=(3, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    fig.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _executed(path: Path) -> Path:
    """A notebook as JupyterLab saves it: a formula, a figure, a progress bar, the explorer."""
    view = {"version_major": 2, "version_minor": 0, "model_id": "0123"}
    explorer = {
        WIDGET: view,
        "text/plain": "Explorer(...)",
        "text/html": '<div class="privkit-explorer-result">σ 1.2</div>',
    }
    outputs = [
        nbformat.v4.new_output(
            "display_data", {WIDGET: view, "text/plain": "  0%|          | 0/5"}
        ),
        nbformat.v4.new_output("display_data", {"image/png": _png(), "text/plain": "<Figure>"}),
        nbformat.v4.new_output("execute_result", explorer, execution_count=1),
    ]
    cell = nbformat.v4.new_code_cell(
        "train(...); widgets.explorer(...)", execution_count=1, outputs=outputs
    )
    lesson = nbformat.v4.new_markdown_cell("# A lesson\n\nNoise $\\sigma C$ on the sum.")
    notebook = nbformat.v4.new_notebook(cells=[lesson, cell])
    notebook.metadata["kernelspec"] = {
        "name": "privkit",
        "display_name": "Python (privkit)",
        "language": "python",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    notebook.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nbformat.write(notebook, path)
    return path


@pytest.mark.slow
def test_the_site_builds_offline_and_keeps_only_static_outputs(tmp_path: Path) -> None:
    page = _executed(tmp_path / "01_lesson.ipynb")
    index = course.build_site({"tutorials": [page]}, tmp_path / "site", conf_dir=REPO / "course")
    assert 'href="tutorials/01_lesson.html"' in index.read_text()
    html = (index.parent / "tutorials" / "01_lesson.html").read_text()
    assert 'class="privkit-explorer-result"' in html and "0%|" not in html and "<img" in html
    assert re.search(r'<script[^>]+src="[./]*_static/mathjax/tex-chtml\.js', html)
    assert (index.parent / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000
    for built in index.parent.rglob("*.html"):  # nothing is fetched from another host
        assert not re.search(
            r'<(script|link|img)[^>]+(src|href)="(https?:)?//', built.read_text()
        ), built


def test_every_tutorial_and_its_solutions_are_in_the_course() -> None:
    found = course.notebooks(TUTORIALS_DIR)
    assert [p.stem for p in found["tutorials"]] == sorted(TUTORIALS)
    assert [p.stem for p in found["solutions"]] == sorted(TUTORIALS)
    with pytest.raises(FileNotFoundError, match="No tutorials"):
        course.notebooks(REPO / "privkit")
