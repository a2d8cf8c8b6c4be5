"""The course: the tutorials and their solutions, executed, as a static site (``make site``).

:func:`execute` runs every tutorial of ``notebooks/tutorials`` and every solutions notebook of
``notebooks/tutorials/solutions`` with papermill, skipping those whose inputs are unchanged
(:func:`privkit.experiments.run_if_stale`). :func:`build_site` turns executed notebooks into a
static HTML site with Sphinx and MyST-NB (what Jupyter Book 1 is built on), configured in
``course/conf.py``. Everything it needs comes from PyPI packages, MathJax included, so the site
builds and reads without internet. A static page has no kernel: widget outputs show their HTML
snapshot (the epsilon explorer has one) or, without one (progress bars), are left out.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import nbformat

from privkit.experiments import Experiment, run_if_stale

SECTIONS = ("tutorials", "solutions")
WIDGET = "application/vnd.jupyter.widget-view+json"


def notebooks(notebooks_dir: str | Path = "notebooks/tutorials") -> dict[str, list[Path]]:
    """The course's notebooks by section: ``NN_*.ipynb`` and ``solutions/NN_*.ipynb``, in order."""
    root = Path(notebooks_dir)
    found = {
        "tutorials": sorted(root.glob("[0-9][0-9]_*.ipynb")),
        "solutions": sorted((root / "solutions").glob("[0-9][0-9]_*.ipynb")),
    }
    if not found["tutorials"]:
        raise FileNotFoundError(f"No tutorials (NN_*.ipynb) in {root.resolve()}.")
    return found


def execute(
    *,
    notebooks_dir: str | Path = "notebooks/tutorials",
    out_dir: str | Path = "results/course/notebooks",
    solutions: bool = True,
    data_root: str | None = None,
    force: bool = False,
) -> dict[str, list[Path]]:
    """Execute the course's notebooks with their own parameters into ``out_dir/<section>/``.

    ``data_root`` (else the notebooks' default: ``$PRIVKIT_DATA``, else medmnist's) is passed to
    each. Returns the executed notebooks by section.
    """
    executed: dict[str, list[Path]] = {}
    for section, paths in notebooks(notebooks_dir).items():
        if section == "solutions" and not solutions:
            continue
        executed[section] = []
        for path in paths:
            parameters = {} if data_root is None else {"data_root": str(data_root)}
            output = Path(out_dir) / section / path.name
            experiment = Experiment(path.stem, path, parameters)
            run_if_stale(experiment, output, force=force, label=f"{section}/{path.stem}")
            executed[section].append(output)
    return executed


def _static(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook without what needs a kernel: widget state, and widget outputs without HTML."""
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [
                o
                for o in cell.outputs
                if WIDGET not in o.get("data", {}) or "text/html" in o["data"]
            ]
    return notebook


def build_site(
    executed: dict[str, Sequence[Path]],
    out_dir: str | Path = "results/course/site",
    *,
    conf_dir: str | Path = "course",
) -> Path:
    """Build the static site of executed notebooks (by section, as :func:`execute` returns them).

    The pages are ``conf_dir/index.md`` followed by one table of contents per section. Sphinx
    runs with warnings as errors, so a broken page fails the build. Returns the site's
    ``index.html``.
    """
    conf_dir, out_dir = Path(conf_dir), Path(out_dir)
    source = out_dir / "source"
    shutil.rmtree(source, ignore_errors=True)
    index = [(conf_dir / "index.md").read_text(encoding="utf-8")]
    for section in SECTIONS:
        paths = list(executed.get(section, ()))
        if not paths:
            continue
        (source / section).mkdir(parents=True)
        for path in paths:
            nbformat.write(_static(nbformat.read(path, as_version=4)), source / section / path.name)
        entries = "\n".join(f"{section}/{p.stem}" for p in paths)
        index.append(
            f"\n```{{toctree}}\n:caption: {section.capitalize()}\n:maxdepth: 1\n\n{entries}\n```\n"
        )
    (source / "index.md").write_text("\n".join(index), encoding="utf-8")
    html = out_dir / "html"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-b",
            "html",
            "-q",
            "-W",
            "--keep-going",
            "-E",
            "-c",
            str(conf_dir.resolve()),
            "-d",
            str(out_dir / "doctrees"),
            str(source),
            str(html),
        ],
        check=True,
    )
    return html / "index.html"
