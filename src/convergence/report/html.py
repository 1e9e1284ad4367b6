"""The self-contained HTML page: inline CSS, no scripts, no network; images by relative
path inside report/. Jinja2 autoescaping turns every prompt and label into text, so a
prompt such as ``<script>`` shows as written instead of running."""

from __future__ import annotations

from jinja2 import Environment, select_autoescape

TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Convergence report: {{ name }}</title>
<style>
body { font: 15px/1.45 "DejaVu Sans", system-ui, sans-serif; color: #1a1a1a; margin: 0 auto;
       max-width: 1320px; padding: 18px 28px 60px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; } h2 { font-size: 21px; margin-top: 36px;
     border-bottom: 2px solid #ddd; padding-bottom: 4px; } h3 { font-size: 17px; margin: 22px 0 6px; }
.meta { color: #555; margin: 2px 0; } .note { color: #555; font-size: 13px; margin: 4px 0 10px; }
.warn { background: #fff3cd; border: 1px solid #e0c36c; padding: 8px 12px; margin: 12px 0; }
nav a { margin-right: 14px; }
table { border-collapse: collapse; margin: 6px 0 4px; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f1f3f5; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.prompt { font-family: "DejaVu Sans Mono", monospace; background: #f6f6f6; padding: 6px 10px;
          white-space: pre-wrap; word-break: break-word; }
figure { margin: 10px 0 18px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; }
details > summary { cursor: pointer; color: #0b5394; margin: 6px 0; }
.verdict-holds, .verdict-supported { color: #006d4f; font-weight: bold; }
.verdict-contradicted, .verdict-refuted { color: #a11; font-weight: bold; }
</style>
</head>
<body>
<h1>Convergence report: {{ name }}</h1>
{% if description %}<p class="meta">{{ description }}</p>{% endif %}
<p class="meta">{{ summary }}</p>
<p class="meta">distance: <b>{{ metric }}</b> to the reference ({{ reference }}) · generated {{ generated }}</p>
{% for w in warnings %}<div class="warn">{{ w }}</div>{% endfor %}
<nav><a href="#tldr">TL;DR</a><a href="#keypoints">Key points</a><a href="#speed">Speed</a>
<a href="#batch">Batch workflow</a>{% if rates %}<a href="#rates">Rates</a>{% endif %}
<a href="#curves">Curves</a><a href="#grids">Grids</a><a href="#files">Files</a></nav>

{% macro table(t) -%}
<table id="table-{{ t.key }}">
<thead><tr>{% for c in t.shown.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.shown.itertuples(index=False) %}<tr>{% for v in row %}
<td{% if v is number %} class="num"{% endif %}{% if t.key == "claims" and loop.index0 == verdict_col %} class="verdict-{{ v|string|lower|replace(' ', '-') }}"{% endif %}>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% if t.note %}<p class="note">{{ t.note }}</p>{% endif %}
<p class="note"><a href="tables/{{ t.key }}.csv">{{ t.key }}.csv</a></p>
{%- endmacro %}

<h2 id="tldr">TL;DR</h2>
{% if claims %}<h3>{{ claims.title }}</h3>{{ table(claims) }}{% endif %}
<h3>{{ cheapest.title }}</h3>{{ table(cheapest) }}
<h3>Batch workflow, best sampler per topic</h3>
{% if batch_best %}<table><thead><tr><th>topic</th><th>sampler</th><th>candidates at</th>
<th>refine at</th><th>A: all {{ n }} at convergence</th><th>B: {{ n }} candidates + {{ k }} refined</th>
<th>speed-up (s)</th><th>speed-up (NFE)</th></tr></thead><tbody>
{% for r in batch_best %}<tr><td>{{ r.topic }}</td><td>{{ r.sampler }}</td><td class="num">{{ r.ind }} steps</td>
<td class="num">{{ r.conv }} steps</td><td class="num">{{ r.A }} s</td><td class="num">{{ r.B }} s</td>
<td class="num">{{ r.sp_s }}</td><td class="num">{{ r.sp_n }}</td></tr>{% endfor %}
</tbody></table>
<p class="note">A = N × t(converged); B = N × t(indicative) + k × t(converged), with N = {{ n }}, k = {{ k }}
and t the cost of one image at that step count (NFE × measured seconds per NFE); the full table is under <a href="#batch">Batch workflow</a>.</p>
{% else %}<p>No sampler reaches both the indicative and the converged point, so there is no workflow to estimate.</p>{% endif %}

<h2 id="keypoints">Key points per sampler × topic</h2>
<p class="note">indicative: the distance to the final image stays below the indicative threshold from here on;
coherent: the image is clean and stable; converged: it no longer changes.</p>
{% for t in keypoints %}<h3>{{ t.title }}</h3>{{ table(t) }}{% endfor %}

<h2 id="speed">Speed</h2>{{ table(speed) }}

<h2 id="batch">Batch workflow</h2><h3>{{ batch.title }}</h3>{{ table(batch) }}

{% if rates %}<h2 id="rates">Convergence rates</h2><h3>{{ rates.title }}</h3>{{ table(rates) }}{% endif %}

<h2 id="curves">Curves</h2>
<p class="note">Distance to the reference against steps, NFE and seconds; median over seeds, the band is the
spread over seeds named in each title; dotted lines: key-point thresholds; dashed lines: samplers that do not
converge. SVG versions beside each PNG.</p>
{% for c in curves %}<figure><img src="{{ c.png }}" alt="{{ c.label }} curves" width="{{ c.width }}">
<figcaption>{{ c.label }} · <a href="{{ c.svg }}">SVG</a></figcaption></figure>{% endfor %}

<h2 id="grids">Grids</h2>
<p class="note">Rows: samplers (schedule below the name); columns: step counts. Frames mark the key points
(median over seeds, on the first swept step at or after it).</p>
{% for t in grids %}<h3 id="grid-{{ loop.index }}">{{ t.topic }}</h3>
{% for p in t.prompts %}<p class="prompt">{{ p }}</p>{% endfor %}
{% for g in t.first %}<figure><img src="{{ g.src }}" alt="grid: {{ t.topic }}, seed {{ g.seed }}" width="{{ g.width }}">
<figcaption>seed {{ g.seed }} · cfg {{ g.cfg }}</figcaption></figure>{% endfor %}
{% if t.more %}<details><summary>{{ t.more|length }} more grid{{ "s" if t.more|length > 1 }} (other seeds / CFG)</summary>
{% for g in t.more %}<figure><img src="{{ g.src }}" alt="grid: {{ t.topic }}, seed {{ g.seed }}" width="{{ g.width }}" loading="lazy">
<figcaption>seed {{ g.seed }} · cfg {{ g.cfg }}</figcaption></figure>{% endfor %}</details>{% endif %}
{% endfor %}

<h2 id="files">Files</h2>
<ul>{% for f in files %}<li><a href="{{ f }}">{{ f }}</a></li>{% endfor %}</ul>
</body>
</html>
"""


def render(**context) -> str:
    """Render the page; every value is escaped unless it is a jinja2 Markup."""
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    return env.from_string(TEMPLATE).render(**context)
