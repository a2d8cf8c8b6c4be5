"""JupyterLab as a student meets it: Debian's chromium, driven by Playwright, opens each tutorial
in `jupyter lab` from the venv, runs all cells through the menu and reads what the page shows
(through ``window.jupyterapp``), moves the epsilon explorer's slider, then opens the course site
built from the notebooks it ran. Screenshots go to ``results/browser/``.

One JupyterLab server and one browser serve the whole session; the tutorials run once (tiny
parameters, synthetic data) and each test reads its part of what they left.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
from tutorials import CHROMIUM, REPO, TUTORIALS, TUTORIALS_DIR, tiny_parameters

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTEFACTS = REPO / "results" / "browser"
RUN_TIMEOUT_S = 600  # one tutorial, Run All to idle
DRAWS = re.compile(r"plt\.subplots\(|\bplots\w*\.\w+\(")  # a cell that makes a figure
STRAY_REPR = re.compile(r"at 0x[0-9a-fA-F]+>|^\[?<matplotlib|^Text\(")
PROGRESS = re.compile(r"\s*\d+%\|.*\|.*")  # a tqdm bar written as text
NEWS_PROMPT = "official Jupyter news"

if CHROMIUM is None:
    pytest.skip(
        "needs Debian's chromium (apt-get install chromium; .ci/run installs it)",
        allow_module_level=True,
    )
playwright = pytest.importorskip("playwright.sync_api")


@dataclass
class Run:
    """What one tutorial left in JupyterLab after Run All."""

    kernel: dict[str, str]
    cells: list[dict[str, Any]]  # code cells: source, outputs (nbformat JSON)
    images: dict[int, list[dict[str, float]]]  # cell index -> each <img>'s natural and shown size
    tables: list[dict[str, Any]]  # each HTML table: its width, its output's width and overflow
    saved: Path
    explorer: dict[str, str] = field(
        default_factory=dict
    )  # the summary before and after a slider move


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def lab(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`jupyter lab` from the venv on 127.0.0.1, token-protected, rooted in a temporary folder
    holding the tutorials with tiny parameters injected (as papermill does); stopped by its pid."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "root"
    root.mkdir()
    for name in TUTORIALS:
        notebook = load_notebook_node(str(TUTORIALS_DIR / f"{name}.ipynb"))
        notebook = parameterize_notebook(notebook, tiny_parameters(name, synthetic_root))
        nbformat.write(notebook, root / f"{name}.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    command = (
        [
            str(Path(sys.executable).with_name("jupyter")),
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}",
            "--LabApp.expose_app_in_browser=True",
            f"--LabApp.app_settings_dir={REPO / 'lab' / 'settings'}",  # what `make lab` installs in the venv
            f"--LabApp.user_settings_dir={tmp / 'user-settings'}",
            f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
        ]
        + (["--allow-root"] if os.geteuid() == 0 else [])
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTER_DATA_DIR": str(tmp / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    env.pop("MPLBACKEND", None)  # CI's Agg would stop the kernels' inline figures
    log = (tmp / "lab.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"jupyter lab did not start:\n{(tmp / 'lab.log').read_text()[-3000:]}"
                    ) from None
                time.sleep(0.5)
        yield {"url": url, "token": token, "root": root, "log": tmp / "lab.log"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


# JavaScript read through window.jupyterapp: the current notebook panel and its cells.
_PANEL = "const panel = window.jupyterapp.shell.currentWidget;"
_STATE = (
    _PANEL
    + """
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  const idle = panel.sessionContext.session.kernel.status === 'idle';
  return {
    error: cells.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error')),
    done: idle && cells.every(c => c.model.executionCount !== null),
  };"""
)
_CELLS = (
    _PANEL
    + """
  return panel.content.widgets.map((c, index) => ({
      index, type: c.model.type, source: c.model.sharedModel.getSource(),
      outputs: c.model.type === 'code' ? c.model.outputs.toJSON() : []}));"""
)
_SHOW = (
    _PANEL
    + """
  await panel.content.scrollToItem(index, 'center');
  await new Promise(r => setTimeout(r, 300));"""
)
_IMAGES = (
    _SHOW
    + """
  return [...panel.content.widgets[index].node.querySelectorAll('.jp-OutputArea-output img')].map(im => ({
      natural_width: im.naturalWidth, natural_height: im.naturalHeight,
      width: im.getBoundingClientRect().width, height: im.getBoundingClientRect().height}));"""
)
_TABLES = (
    _SHOW
    + """
  return [...panel.content.widgets[index].node.querySelectorAll('.jp-OutputArea-output')].flatMap(out =>
      [...out.querySelectorAll('table')].map(t => ({index, table_width: t.getBoundingClientRect().width,
          output_width: out.clientWidth, overflow_x: getComputedStyle(out).overflowX})));"""
)


def _js(page: Any, body: str, arg: Any = None) -> Any:
    return page.evaluate(f"async (index) => {{ {body} }}", arg)


def _run_all(page: Any, lab: dict[str, Any], name: str) -> Run:
    _js(
        page,
        f"""
        const panel = await window.jupyterapp.commands.execute('docmanager:open', {{path: '{name}.ipynb'}});
        await panel.context.ready; await panel.sessionContext.ready;""",
    )
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel"
    )
    page.locator("#jp-MainMenu .lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not any((state := _js(page, _STATE)).values()):
        assert time.monotonic() < deadline, f"{name}: Run All did not finish in {RUN_TIMEOUT_S} s"
        time.sleep(1)
    kernel = _js(
        page,
        _PANEL
        + """
        const session = panel.sessionContext;
        return {name: session.session.kernel.name, display_name: session.kernelDisplayName};""",
    )
    cells = _js(page, _CELLS)
    data = {c["index"]: [o.get("data", {}) for o in c["outputs"]] for c in cells}
    images = {
        c["index"]: _js(page, _IMAGES, c["index"])
        for c in cells
        if any("image/png" in d for d in data[c["index"]]) or DRAWS.search(c["source"])
    }
    tables = [
        t
        for c in cells
        if any("<table" in str(d.get("text/html", "")) for d in data[c["index"]])
        for t in _js(page, _TABLES, c["index"])
    ]
    page.screenshot(path=ARTEFACTS / f"{name}.png")
    code = [c for c in cells if c["type"] == "code"]
    run = Run(kernel, code, images, tables, lab["root"] / f"{name}.ipynb")
    if not state["error"] and "widgets.explorer(" in "".join(c["source"] for c in cells):
        run.explorer = _move_explorer_slider(page, name, cells)
    _js(
        page,
        _PANEL
        + """
        await window.jupyterapp.commands.execute('docmanager:save');
        await panel.sessionContext.shutdown(); panel.dispose();""",
    )
    return run


def _move_explorer_slider(page: Any, name: str, cells: list[dict[str, Any]]) -> dict[str, str]:
    """Press the right arrow on the explorer's epsilon slider; the summary it shows before and after."""
    index = next(c["index"] for c in cells if "widgets.explorer(" in c["source"])
    _js(page, _SHOW, index)
    explorer = page.locator(".privkit-explorer").first
    result = explorer.locator(".privkit-explorer-result")
    before = result.inner_text()
    handle = explorer.locator(".noUi-handle").first
    handle.focus()
    handle.press("ArrowRight")
    page.wait_for_function(
        "(before) => document.querySelector('.privkit-explorer-result').innerText !== before",
        arg=before,
        timeout=RUN_TIMEOUT_S * 1000,
    )
    page.wait_for_timeout(500)
    explorer.screenshot(path=ARTEFACTS / f"{name}-explorer.png")
    return {"before": before, "after": result.inner_text()}


@pytest.fixture(scope="session")
def lab_runs(lab: dict[str, Any], browser: Any) -> dict[str, Run]:
    """Every tutorial, Run All through the menu, in one JupyterLab page."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(f"{lab['url']}/lab?token={lab['token']}")
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell.currentWidget !== undefined"
    )
    page.evaluate("() => window.jupyterapp.restored")
    page.wait_for_timeout(2000)  # the news prompt, if any, appears once the layout is restored
    runs = {"_news_prompt": NEWS_PROMPT in page.inner_text("body")}
    for name in TUTORIALS:
        runs[name] = _run_all(page, lab, name)
    page.close()
    return runs


def _texts(output: dict[str, Any]) -> list[str]:
    if output["output_type"] == "stream":
        return [output["text"]]
    return [output.get("data", {}).get("text/plain", "")]


def test_the_lab_shows_no_news_pop_up(lab_runs: dict[str, Any]) -> None:
    assert not lab_runs["_news_prompt"]


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs_all_cells_cleanly_in_jupyterlab(name: str, lab_runs: dict[str, Any]) -> None:
    run: Run = lab_runs[name]
    assert run.kernel == {"name": "privkit", "display_name": "Python (privkit)"}
    outputs = [o for c in run.cells for o in c["outputs"]]
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o["output_type"] == "error"]
    assert not errors, f"{name}: {errors}"
    assert TUTORIALS[name][1] in "".join(t for o in outputs for t in _texts(o))
    stderr = [o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == "stderr"]
    lines = {t: [line for line in re.split(r"[\r\n]+", t) if line] for t in stderr}
    noise = [
        t for t in stderr if not t.strip() or not all(PROGRESS.fullmatch(line) for line in lines[t])
    ]
    assert not noise, f"{name}: stderr that is not progress: {noise}"
    strays = [t for o in outputs for t in _texts(o) if STRAY_REPR.search(t)]
    assert not strays, f"{name}: stray reprs {strays}"
    for index, images in run.images.items():
        assert images, f"{name}: cell {index} draws but shows no image"
        for image in images:
            assert image["natural_width"] >= 200 and image["natural_height"] >= 100, (
                name,
                index,
                image,
            )
            assert image["width"] >= 200 and image["height"] >= 100, (name, index, image)
    for table in run.tables:
        fits = table["table_width"] <= table["output_width"] + 1
        assert fits or table["overflow_x"] in ("auto", "scroll"), (name, table)


EXPLORED = [
    n for n in TUTORIALS if "widgets.explorer(" in (TUTORIALS_DIR / f"{n}.ipynb").read_text()
]


@pytest.mark.parametrize("name", EXPLORED)
def test_moving_the_epsilon_slider_changes_the_numbers(name: str, lab_runs: dict[str, Any]) -> None:
    explorer = lab_runs[name].explorer
    assert explorer, f"{name}: the explorer was not reached"
    sigma = [
        float(re.search(r"noise multiplier σ\s*([\d.]+)", explorer[k]).group(1))
        for k in ("before", "after")
    ]
    assert sigma[1] < sigma[0]  # a larger epsilon asks for less noise
    tpr = [re.findall(r"([\d.]+)% at FPR", explorer[k]) for k in ("before", "after")]
    assert len(tpr[0]) == 2 and tpr[0] != tpr[1]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def test_course_site_of_the_executed_tutorials(
    lab_runs: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    from privkit import course

    executed = {"tutorials": [lab_runs[n].saved for n in TUTORIALS]}
    index = course.build_site(executed, tmp_path / "site", conf_dir=REPO / "course")
    handler = functools.partial(_Quiet, directory=index.parent)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    outside = []  # every request that leaves the site's server
    page.on(
        "request", lambda r: None if r.url.startswith((base, "data:")) else outside.append(r.url)
    )
    try:
        page.goto(base)
        notebooks = [nbformat.read(lab_runs[n].saved, as_version=4) for n in TUTORIALS]
        titles = [nb.cells[0].source.splitlines()[0].lstrip("# ") for nb in notebooks]
        figures = [
            sum(
                "image/png" in o.get("data", {})
                for c in nb.cells
                if c.cell_type == "code"
                for o in c.outputs
            )
            for nb in notebooks
        ]
        assert sum(figures) >= 4
        navigation = page.locator("nav.bd-links a")
        shown = [
            navigation.nth(i).inner_text().replace("\u2019", "'") for i in range(navigation.count())
        ]
        assert shown == titles  # (Sphinx typesets ' as a curly quote)
        page.screenshot(path=ARTEFACTS / "site-index.png")
        navigation.first.click()
        for i, title in enumerate(titles):
            page.wait_for_load_state("load")
            page.wait_for_function(
                "() => !window.MathJax || MathJax.startup?.promise !== undefined"
            )
            page.evaluate("() => window.MathJax?.startup?.promise")
            assert (
                page.locator("h1").first.inner_text().rstrip("#").strip().replace("\u2019", "'")
                == title
            )
            images = page.evaluate("""() => [...document.querySelectorAll('article img')].map(
                im => [im.naturalWidth, im.getBoundingClientRect().width])""")
            assert len(images) == figures[i], (title, images)  # every figure the notebook drew
            assert all(nat >= 200 and shown >= 100 for nat, shown in images), (title, images)
            if i == 0:
                assert (
                    page.locator("mjx-container").count() >= 5
                )  # the tutorial's formulas, typeset
                assert "\\sigma" not in page.locator("article").inner_text()  # no raw TeX left
                page.screenshot(path=ARTEFACTS / "site-tutorial.png")
            if i + 1 < len(titles):
                page.locator("a.right-next").click()
        assert not outside, f"the site asked the internet for {outside}"
    finally:
        page.close()
        server.shutdown()
