"""The self-contained HTML page: inline CSS and the viewer's inline script, no network;
images by relative path inside report/.

The page lives in ``templates/`` (the HTML, the viewer's CSS and JavaScript as files an
editor highlights). Jinja2 autoescaping turns every prompt and label into text, so a
prompt such as ``<script>`` shows as written instead of running; the viewer's JSON is
escaped by :func:`convergence.report.viewer.script_json`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

TEMPLATES = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                       autoescape=select_autoescape(default=True, default_for_string=True))


def asset(name: str) -> Markup:
    """A template file inlined verbatim (the viewer's CSS and JS: no Jinja parsing)."""
    return Markup((TEMPLATES / name).read_text(encoding="utf-8"))


def render(**context) -> str:
    """Render the page; every value is escaped unless it is a jinja2 Markup."""
    return _env().get_template("report.html.j2").render(
        viewer_css=asset("viewer.css"), viewer_js=asset("viewer.js"), **context)
