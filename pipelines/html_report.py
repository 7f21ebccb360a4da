"""Self-contained HTML pages of search results: thumbnails inlined, no external files."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from pipelines.times import span_text, utc_text
from storage import PersonHit, SearchHit

# Shared by every self-contained page of the project (search results here, benchmark rankings in bench_report).
PAGE_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em} h2{font-size:1.05em;margin:1.2em 0 .4em}
.row{display:flex;gap:8px;align-items:flex-start;flex-wrap:wrap}
figure{margin:0;padding:4px;background:#fff;border:3px solid #ddd;border-radius:4px;text-align:center;font-size:11px}
figure.query{border-color:#36c} figure.hit{border-color:#2a2} figure.miss{border-color:#d33}
figure.far{border-style:dashed;opacity:.7} .nomatch{color:#b11;font-weight:600}
figure img{height:128px;display:block;margin:0 auto 3px}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}
details{text-align:left;margin-top:2px} details td,details th{font-size:10px;padding:0 3px}
"""


@dataclass
class ResultSection:
    """One query and its ranked hits; ``correct`` (optional, same length as hits) colours hits green/red.

    ``hit_captions`` add lines under each hit; ``part_names`` label the per-part distances shown under
    each hit ("part i" when empty);
    ``visibility_parts`` are the queried parts whose mean visibility each caption shows (all when None; none for
    a global model's hits, which have no parts); hits farther than ``no_close_match_above`` (the model's
    calibrated distance, None: not calibrated) say "no close match".
    """

    title: str
    query_thumbnail: bytes | None
    hits: Sequence[SearchHit]
    correct: Sequence[bool] | None = None
    query_caption: str = "query"
    hit_captions: Sequence[str] = field(default_factory=list)
    part_names: Sequence[str] = ()
    visibility_parts: Sequence[int] | None = None
    no_close_match_above: float | None = None


def _img(data: bytes | None) -> str:
    if not data:
        return "<div style='height:128px;width:64px;background:#eee'></div>"
    return f"<img alt='' src='data:image/jpeg;base64,{base64.b64encode(data).decode()}'>"


def people_section(title: str, query_thumbnail: bytes | None, people: Sequence[PersonHit], part_names: Sequence[str] = (),
                   visibility_parts: Sequence[int] | None = None,
                   no_close_match_above: float | None = None) -> ResultSection:
    """A query and its top people: each shown by its closest detection, with its tracklet, time span (UTC) and how many
    of its detections matched."""
    captions = [f"{f'track {p.track_id}' if p.track_id else 'no track'}\n{span_text(p.t_start, p.t_end)} UTC\n"
                f"{p.matched} of {p.detections} detections matched" for p in people]
    return ResultSection(title, query_thumbnail, [p.best for p in people], hit_captions=captions,
                         part_names=part_names, visibility_parts=visibility_parts,
                         no_close_match_above=no_close_match_above)


def _parts_table(hit: SearchHit, names: Sequence[str]) -> str:
    """A collapsed table of the hit's per-part distance and visibility ("-": part not visible in both)."""
    if hit.part_distances is None:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(names[k] if k < len(names) else f'part {k + 1}')}</td>"
        f"<td>{'-' if np.isnan(d) else f'{d:.3f}'}</td><td>{hit.visibility[k]:.2f}</td></tr>"
        for k, d in enumerate(hit.part_distances)
    )
    return f"<details><summary>parts</summary><table><tr><th>part</th><th>d</th><th>vis</th></tr>{rows}</table></details>"


def _section(section: ResultSection) -> str:
    figures = [f"<figure class='query'>{_img(section.query_thumbnail)}{html.escape(section.query_caption)}</figure>"]
    for i, hit in enumerate(section.hits):
        css = "" if section.correct is None else ("hit" if section.correct[i] else "miss")
        far = section.no_close_match_above is not None and not hit.distance <= section.no_close_match_above
        extra = section.hit_captions[i] if i < len(section.hit_captions) else ""
        lines = "".join(f"<br>{html.escape(line)}" for line in extra.splitlines())
        caption = (f"{'<span class=nomatch>no close match</span><br>' if far else ''}#{i + 1} {html.escape(hit.camera_id)}<br>d={hit.distance:.3f}<br>{utc_text(hit.timestamp)} UTC"
                   f"{'' if hit.visibility is None else f'<br>vis {hit.mean_visibility(section.visibility_parts):.2f}'}"
                   f"{lines}{_parts_table(hit, section.part_names)}")
        figures.append(f"<figure class='{css}{' far' if far else ''}' title='{html.escape(hit.detection_id)}'>{_img(hit.thumbnail)}{caption}</figure>")
    return f"<h2>{html.escape(section.title)}</h2><div class='row'>{''.join(figures)}</div>"


def write_results_html(path: str | Path, title: str, sections: Sequence[ResultSection], summary: dict | None = None) -> Path:
    """Write a page with a summary table (optional) and one row of thumbnails per query."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in (summary or {}).items())
    body = f"<h1>{html.escape(title)}</h1>" + (f"<table>{rows}</table>" if rows else "") + "".join(map(_section, sections))
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head><body>{body}</body></html>"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
