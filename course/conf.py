# Sphinx configuration of the course site (`make site`, privkit.course.build_site).
# Everything here comes from PyPI packages and builds and reads without internet: MyST-NB reads
# the executed notebooks (no execution), MathJax is served from the site (sphinx-mathjax-offline).

project = "privkit: privacy-preserving medical AI, a course"
author = "privkit contributors"
extensions = ["myst_nb", "sphinx-mathjax-offline"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

nb_execution_mode = "off"  # the notebooks arrive executed
myst_enable_extensions = ["dollarmath", "amsmath"]
nb_ipywidgets_js = {}  # no widget manager from a CDN: widgets show their static HTML snapshot
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]

html_theme = "sphinx_book_theme"
html_title = "privkit course"
html_theme_options = {
    "show_navbar_depth": 2,
    "use_download_button": True,  # the executed .ipynb of each page
    "use_fullscreen_button": False,
}
html_show_sourcelink = False
html_last_updated_fmt = None
