"""The `kpr bench` report: benchmark.json, benchmark.md, a CMC plot (PNG) and a ranking page (HTML) per dataset.

The ranking page is self-contained (images inlined): for some queries, the query crop with its
keypoint prompt, its top-k gallery crops outlined green (same identity) or red, the part attention
maps overlaid on every crop, and per-part visibility and distances.
"""
from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipelines.html_report import PAGE_STYLE
from training.benchmark import DatasetBenchmark, RankingExample
from training.samples import LoadedSample

CROP_HEIGHT = 128
_PART_COLOURS = (np.array(colormaps["tab10"].colors)[:, ::-1] * 255).astype(np.uint8)  # BGR
_METRICS = (("map", "mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"), ("rank10", "rank-10"), ("mINP", "mINP"))

_STYLE = PAGE_STYLE + """
figure img{display:inline;margin:0 1px 3px}
details img.strip{height:64px}
.legend span{display:inline-block;padding:0 6px;margin-right:4px;color:#fff;font-size:12px;border-radius:3px}
"""


def summary_json(benchmarks: Sequence[DatasetBenchmark], meta: Mapping) -> dict:
    """The machine-readable report: ``meta`` (model, command, ...) and, per dataset, its sizes and every method's figures."""
    datasets = {}
    for bench in benchmarks:
        data = bench.data
        datasets[data.name] = {
            "root": data.root, "num_query": len(data.query), "num_gallery": len(data.gallery),
            "query_identities": len({s.pid for s in data.query}),
            "gallery_identities": len({s.pid for s in data.gallery}),
            "queries_with_keypoints": sum(bool(np.any(s.keypoints[:, 2] > 0)) for s in data.query),
            "queries_with_negatives": sum(len(s.negatives) > 0 for s in data.query),
            "drop_same_camera": data.drop_same_camera,
            "methods": {name: result.summary() for name, result in bench.results.items()},
        }
    return {**meta, "datasets": datasets}


def _percentages(figures: Mapping) -> list[str]:
    """A method's report metrics in percent, in table order ("-" for a rank beyond the gallery)."""
    return [f"{100 * figures[key]:.1f}" if key in figures else "-" for key, _ in _METRICS]


def markdown(summary: Mapping) -> str:
    """One table per dataset: mAP, rank-1/5/10 and mINP of every method, in percent."""
    lines = ["# kpr bench report", ""]
    lines += [f"- {key}: `{value}`" for key, value in summary.items() if key != "datasets"]
    for name, dataset in summary["datasets"].items():
        rule = "same-identity same-camera gallery crops ignored" if dataset["drop_same_camera"] else "no camera rule"
        lines += ["", f"## {name}", "",
                  f"{dataset['num_query']} queries ({dataset['query_identities']} identities), "
                  f"{dataset['num_gallery']} gallery crops; {rule}.", "",
                  "| method | " + " | ".join(label for _, label in _METRICS) + " |",
                  "| --- |" + " ---: |" * len(_METRICS)]
        for method, figures in dataset["methods"].items():
            lines.append(f"| {method} | {' | '.join(_percentages(figures))} |")
    return "\n".join(lines) + "\n"


def plot_cmc(bench: DatasetBenchmark, path: Path) -> Path:
    """CMC curves (rank 1 to min(50, gallery size)) of every method as a PNG (Agg canvas, no display needed)."""
    ranks = min(50, len(bench.data.gallery))
    figure = Figure(figsize=(6.4, 4.2), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots()
    for name, result in bench.results.items():
        curve = result.metrics.cmc[:ranks]
        axes.plot(np.arange(1, ranks + 1), 100 * curve, marker=".", label=f"{name} (R1 {100 * result.metrics.rank1:.1f})")
    axes.set(xlabel="rank", ylabel="matching rate (%)", ylim=(0, 101), xlim=(1, ranks),
             title=f"CMC on {bench.data.name} ({len(bench.data.query)} queries)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    canvas.print_png(str(path))
    return path


def _jpeg(image: np.ndarray) -> str:
    """A BGR image as an inline <img> source."""
    _, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode()


def _display(sample: LoadedSample) -> tuple[np.ndarray, float]:
    """The crop as BGR at the page's height, and the scale applied to it."""
    scale = CROP_HEIGHT / sample.image.shape[0]
    width = max(1, round(sample.image.shape[1] * scale))
    return cv2.resize(cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR), (width, CROP_HEIGHT)), scale


def _with_keypoints(sample: LoadedSample) -> np.ndarray:
    """The crop with its target keypoints (green dots) and negative keypoints (red crosses) drawn."""
    image, scale = _display(sample)
    for x, y, c in sample.keypoints:
        if c > 0:
            cv2.circle(image, (round(x * scale), round(y * scale)), 2, (40, 200, 40), -1, cv2.LINE_AA)
    for skeleton in sample.negatives:
        for x, y, c in skeleton:
            if c > 0:
                cv2.drawMarker(image, (round(x * scale), round(y * scale)), (40, 40, 230), cv2.MARKER_TILTED_CROSS, 5, 1)
    return image


def _maps_at(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Part maps [K, h, w] resized to (width, height) = ``size``: [K, height, width]."""
    return np.stack([cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) for m in maps])


def _parts_overlay(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Each pixel tinted with the colour of its most likely part, as strongly as that part's probability."""
    maps = _maps_at(maps, (image.shape[1], image.shape[0]))
    colours = _PART_COLOURS[maps.argmax(axis=0) % len(_PART_COLOURS)].astype(np.float32)
    alpha = (0.75 * maps.max(axis=0))[..., None]
    return (image * (1 - alpha) + colours * alpha).astype(np.uint8)


def _heatmap_strip(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """One heatmap per part (JET colours, half-blended with the crop), side by side in part order."""
    maps = _maps_at(maps, (image.shape[1], image.shape[0]))
    tiles = [cv2.addWeighted(image, 0.5, cv2.applyColorMap((255 * np.clip(m, 0, 1)).astype(np.uint8), cv2.COLORMAP_JET),
                             0.5, 0) for m in maps]
    return np.concatenate(tiles, axis=1)


def _parts_details(image: np.ndarray, maps: np.ndarray, names: Sequence[str], visibility: np.ndarray,
                   distances: np.ndarray | None) -> str:
    """The collapsed per-part block: heatmap strip, then a table of visibility and distance per part."""
    header = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    vis = "".join(f"<td>{v:.2f}</td>" for v in visibility)
    rows = f"<tr><th>part</th>{header}</tr><tr><th>vis</th>{vis}</tr>"
    if distances is not None:
        rows += "<tr><th>d</th>" + "".join(f"<td>{'-' if np.isnan(d) else f'{d:.3f}'}</td>" for d in distances) + "</tr>"
    return (f"<details><summary>parts</summary><img class='strip' alt='part heatmaps' "
            f"src='{_jpeg(_heatmap_strip(image, maps))}'><table>{rows}</table></details>")


def _figure(sample: LoadedSample, sample_name: str, css: str, caption: str, maps: np.ndarray, names: Sequence[str],
            visibility: np.ndarray, distances: np.ndarray | None) -> str:
    """One crop (with its prompt; its file name as tooltip), its part overlay, a caption and the per-part block."""
    plain, _ = _display(sample)
    return (f"<figure class='{css}' title='{html.escape(sample_name)}'><img alt='crop' src='{_jpeg(_with_keypoints(sample))}'>"
            f"<img alt='parts' src='{_jpeg(_parts_overlay(plain, maps))}'><br>{caption}"
            f"{_parts_details(plain, maps, names, visibility, distances)}</figure>")


def _file_name(paths: Sequence[Path], index: int) -> str:
    """The image file name of a crop, or its index when the split was built without paths."""
    return paths[index].name if index < len(paths) else f"#{index}"


def _example(bench: DatasetBenchmark, example: RankingExample) -> str:
    """A query's heading and row: the query figure, then its top-k gallery figures."""
    data, names = bench.data, bench.part_names
    query = data.query[example.query]
    firsts = ", ".join(f"{name} #{rank}" if rank else f"{name} none" for name, rank in example.first_match.items())
    figures = [_figure(query, _file_name(data.query_paths, example.query), "query",
                       f"query<br>id {query.pid}, cam {query.camid}", example.part_maps[0], names,
                       example.visibility[0], None)]
    for rank, (index, distance, correct) in enumerate(zip(example.gallery, example.distances, example.correct), 1):
        crop = data.gallery[index]
        figures.append(_figure(crop, _file_name(data.gallery_paths, index), "hit" if correct else "miss",
                               f"#{rank} id {crop.pid}, cam {crop.camid}<br>d={distance:.3f}",
                               example.part_maps[rank], names, example.visibility[rank],
                               example.part_distances[rank - 1]))
    title = f"query {example.query}: id {query.pid}, camera {query.camid}; first true match: {firsts}"
    return f"<h2>{html.escape(title)}</h2><div class='row'>{''.join(figures)}</div>"


def ranking_html(bench: DatasetBenchmark, summary: Mapping, path: Path) -> Path:
    """The self-contained ranking page of one dataset (figures table, part legend, then one row per shown query)."""
    dataset = summary["datasets"][bench.data.name]
    metrics = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{cell}</td>" for cell in _percentages(figures))
                      + "</tr>" for name, figures in dataset["methods"].items())
    header = "<tr><th>method</th>" + "".join(f"<th>{label}</th>" for _, label in _METRICS) + "</tr>"
    legend = "".join(f"<span style='background:rgb{tuple(int(c) for c in _PART_COLOURS[k % len(_PART_COLOURS)][::-1])}'>"
                     f"{html.escape(name)}</span>" for k, name in enumerate(bench.part_names))
    mode = bench.examples[0].mode if bench.examples else None
    intro = (f"<p>Top-{len(bench.examples[0].gallery)} under <b>{mode}</b>: green = same identity, red = another "
             f"identity. Each crop shows its keypoint prompt (green dots: target, red crosses: other people; only in "
             f"prompt mode) and its part attention maps; open <i>parts</i> for the heatmap of each part, its "
             f"visibility and its distance to the query. Cameras are numbered from 0; hover a crop for its file name.</p>"
             f"<p class='legend'>{legend}</p>" if mode else
             "<p>No part-based mode (prompt or no_prompt) was run, so no ranking is shown.</p>")
    title = f"kpr bench: {bench.data.name} ranking"
    body = (f"<h1>{html.escape(title)}</h1><p>{dataset['num_query']} queries, {dataset['num_gallery']} gallery crops "
            f"(in %)</p><table>{header}{metrics}</table>{intro}" + "".join(_example(bench, e) for e in bench.examples))
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{_STYLE}</style></head><body>{body}</body></html>")
    return path


def write_report(out: str | Path, benchmarks: Sequence[DatasetBenchmark], meta: Mapping) -> dict[str, Path]:
    """Write benchmark.json, benchmark.md, cmc_<dataset>.png and ranking_<dataset>.html into ``out``; their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_json(benchmarks, meta)
    written = {"json": out / "benchmark.json", "markdown": out / "benchmark.md"}
    written["json"].write_text(json.dumps(summary, indent=2) + "\n")
    written["markdown"].write_text(markdown(summary))
    for bench in benchmarks:
        written[f"cmc_{bench.data.name}"] = plot_cmc(bench, out / f"cmc_{bench.data.name}.png")
        written[f"ranking_{bench.data.name}"] = ranking_html(bench, summary, out / f"ranking_{bench.data.name}.html")
    return written
