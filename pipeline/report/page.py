"""``OUT/report.html``: one page that shows a run from its own files, offline.

Everything on the page comes from what the run folder already holds: run.json (states, steps, times,
errors), config.yaml (the keys that differ from the nearest preset), ``00_preprocess/`` (the photo,
the recentred crop, mask, depth, normal, landmarks), each stage's ``previews/`` and ``losses.json``
(the loss means the checkpointer records) and ``final/``. Next to the page, ``report_files/`` holds
``<model-viewer>`` (Google's web component, three.js inside; Apache-2.0 and MIT, licences beside it) and
``models.js``, the avatar as a data URL (its unlit variant, ``KHR_materials_unlit`` on every material, is
made from it in the page): a page opened from disk may not fetch files, but it may run classic scripts
beside it. A bench folder's page adds the subject beside the result and bench.json's
figures. Nothing on the page reaches the network.
"""
from __future__ import annotations

import base64
import functools
import html
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from pipeline.report.charts import line_chart, wants_log
from pipeline.run.store import atomic_write_bytes

ASSETS = Path(__file__).resolve().parent / "assets"
VIEWER_JS = "model-viewer-umd.min.js"
LICENCES = ("LICENSE-model-viewer.txt", "LICENSE-three.txt")
FILES = "report_files"
PAGE = "report.html"
LOSSES = "losses.json"
PRESETS = ("release", "paper", "cpu", "demo")
UNHASHED = ("priors",)
"""Config sections left out of the differences shown (weight locations, not method)."""
PREVIEW_NAME = re.compile(r"step_(\d+)\.png$")

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:12px 20px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:28px}h3{font-size:15px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}
.maps{display:flex;flex-wrap:wrap;gap:12px}.maps figure{margin:0}.maps img{height:192px;image-rendering:pixelated;
background:#eee}figcaption{font-size:12px;color:#555}.lm{position:relative;display:inline-block}
.lm svg{position:absolute;left:0;top:0;width:100%;height:100%}.state-done{color:#060}.state-failed{color:#b00}
.state-running,.state-interrupted{color:#a60}.error{color:#b00;font-family:monospace;white-space:pre-wrap}
.strip img{max-width:100%;image-rendering:pixelated}.viewers{display:flex;gap:12px;flex-wrap:wrap}
model-viewer{width:560px;height:560px;background:#f4f4f4}.viewers figure{margin:0}.viewer figcaption{font-size:13px}
"""
SCRIPT = """
function gmSetPreview(id, i){var s=window.GM_PREVIEWS[id][i];var img=document.getElementById(id);
img.src=s[1];document.getElementById(id+'-label').textContent='step '+s[0];}
var GM_UNLIT={};
function gmUnlit(key){
 /* the model's GLB with KHR_materials_unlit on every material (its base colour, no shading), as a blob URL */
 if(GM_UNLIT[key])return GM_UNLIT[key];
 var bin=atob(window.GENEMAN_MODELS[key].split(',')[1]);var u=new Uint8Array(bin.length);
 for(var i=0;i<bin.length;i++)u[i]=bin.charCodeAt(i);
 var jl=new DataView(u.buffer).getUint32(12,true);
 var doc=JSON.parse(new TextDecoder().decode(u.subarray(20,20+jl)));
 (doc.materials||[]).forEach(function(m){m.extensions=m.extensions||{};m.extensions.KHR_materials_unlit={};});
 doc.extensionsUsed=doc.extensionsUsed||[];
 if(doc.extensionsUsed.indexOf('KHR_materials_unlit')<0)doc.extensionsUsed.push('KHR_materials_unlit');
 var t=new TextEncoder().encode(JSON.stringify(doc));var pad=(4-t.length%4)%4;var rest=u.subarray(20+jl);
 var out=new Uint8Array(20+t.length+pad+rest.length);var o=new DataView(out.buffer);
 o.setUint32(0,0x46546C67,true);o.setUint32(4,2,true);o.setUint32(8,out.length,true);
 o.setUint32(12,t.length+pad,true);o.setUint32(16,0x4E4F534A,true);out.set(t,20);
 for(var k=0;k<pad;k++)out[20+t.length+k]=32;out.set(rest,20+t.length+pad);
 return GM_UNLIT[key]=URL.createObjectURL(new Blob([out],{type:'model/gltf-binary'}));}
function gmLight(button){var lit=button.dataset.lit!=='1';button.dataset.lit=lit?'1':'0';
button.textContent=lit?'lit (switch to unlit)':'unlit (switch to lit)';
document.querySelectorAll('model-viewer').forEach(function(v){var k=v.dataset.model;
v.src=lit?window.GENEMAN_MODELS[k]:gmUnlit(k);});}
window.addEventListener('DOMContentLoaded',function(){document.querySelectorAll('model-viewer').forEach(
function(v){if((window.GENEMAN_MODELS||{})[v.dataset.model]){v.src=gmUnlit(v.dataset.model);}});});
"""


def html_page(title: str, body: str, head: str = "") -> str:
    """A whole page: the title, the shared style, ``head`` (scripts) and ``body``."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style>{head}</head><body>{body}</body></html>\n")


def stage_seconds(manifest: Any) -> float:
    """The seconds a run's stages took, from its run.json (0 for anything else)."""
    stages = manifest.get("stages", {}) if isinstance(manifest, dict) else {}
    return sum(float(r.get("elapsed_s", 0.0)) for r in stages.values())


def esc(text: Any) -> str:
    return html.escape(str(text))


def rel(root: Path, path: Path) -> str:
    """``path`` as a URL relative to the page in ``root``."""
    return "/".join(path.relative_to(root).parts)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---- the photo and preprocess


def landmarks(root: Path) -> list[tuple[float, float, float]]:
    """The MediaPipe landmarks ``(x, y, visibility)`` preprocess stored, or [] (none, or unreadable)."""
    path = root / "00_preprocess" / "result" / "inputs.safetensors"
    try:
        from safetensors.numpy import load_file

        lm = load_file(str(path)).get("landmarks")
    except Exception:  # noqa: BLE001 - an unreadable file just leaves the landmarks out
        return []
    return [] if lm is None else [tuple(map(float, row[:3])) for row in lm]


def photo_section(root: Path, base: Path, manifest: dict) -> str:
    pre = root / "00_preprocess"
    items = []
    photo = pre / str(manifest.get("input", {}).get("stored_photo") or "")
    if photo.is_file():
        items.append(("photo", photo, ""))
    for name, caption in (("rgba.png", "recentred crop"), ("mask.png", "mask"), ("depth.png", "depth"),
                          ("normal.png", "normal")):
        if (pre / "result" / name).is_file():
            items.append((caption, pre / "result" / name, ""))
    lm = landmarks(root)
    if lm and (pre / "result" / "rgba.png").is_file():
        dots = "".join(f'<circle cx="{x:.4f}" cy="{y:.4f}" r="0.012" fill="{"#e00" if v > 0.5 else "#fa0"}"/>'
                       for x, y, v in lm)
        svg = f'<svg viewBox="0 0 1 1" preserveAspectRatio="none">{dots}</svg>'
        items.append(("landmarks", pre / "result" / "rgba.png", svg))
    if not items:
        return '<section id="photo"><h2>Photo</h2><p>preprocess has not run yet.</p></section>'
    figures = "".join(
        f'<figure data-map="{esc(caption)}"><span class="lm"><img src="{esc(rel(base, path))}" alt="{esc(caption)}">'
        f'{extra}</span><figcaption>{esc(caption)}</figcaption></figure>' for caption, path, extra in items)
    note = "" if lm else "<p>No body landmarks were found or asked for.</p>"
    return f'<section id="photo"><h2>Photo</h2><div class="maps">{figures}</div>{note}</section>'


# ---- the stages


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


@functools.lru_cache(maxsize=None)
def preset_values(name: str) -> dict[str, Any]:
    """The preset's flattened values as config.yaml writes them, outside the weight locations (read once per
    process: a run rewrites its page after every stage)."""
    from pipeline.config import load_config, to_dict  # the schema (imports the stages, so torch)

    return {k: v for k, v in flatten(to_dict(load_config(name, None, []))).items() if k.split(".")[0] not in UNHASHED}


def preset_differences(cfg: dict) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """The preset nearest to the run's config and the keys (outside the weight locations) that differ:
    ``{key: (run value, preset value)}``. Both sides as config.yaml writes them (``pipeline.config.to_dict``)."""
    mine = {k: v for k, v in flatten(cfg).items() if k.split(".")[0] not in UNHASHED}
    best: tuple[str, dict] = ("", {})
    for name in PRESETS:
        preset = preset_values(name)
        diff = {k: (v, preset.get(k)) for k, v in mine.items() if preset.get(k, object()) != v}
        if not best[0] or len(diff) < len(best[1]):
            best = (name, diff)
    return best


def stage_folder(root: Path, name: str) -> Path | None:
    return next(iter(sorted(root.glob(f"[0-9][0-9]_{name}"))), None)


def previews(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in (folder / "previews").glob("step_*.png")
             if (m := PREVIEW_NAME.search(p.name))] if (folder / "previews").is_dir() else []
    return sorted(found)


def loss_series(folder: Path) -> dict[str, tuple[list[float], list[float]]]:
    """The stage's recorded loss means ``{loss: (steps, values)}`` (``losses.json``), or {}."""
    record = read_json(folder / LOSSES)
    if not isinstance(record, dict) or not isinstance(record.get("steps"), list):
        return {}
    steps = record["steps"]
    return {k: (steps, v) for k, v in record.get("losses", {}).items() if isinstance(v, list) and len(v) == len(steps)}


def stage_section(root: Path, base: Path, name: str, rec: dict, preset: str, diff: dict, scripts: dict) -> str:
    """One stage: state, steps, time, config differences, previews (a slider), loss curves, the failure."""
    folder = stage_folder(root, name)
    state = str(rec.get("state", "pending"))
    head = (f'<table class="facts"><tr><th>state</th><td class="state-{esc(state)}">{esc(state)}</td></tr>'
            f'<tr><th>steps</th><td>{esc(rec.get("step", 0))}/{esc(rec.get("total", "?"))}</td></tr>'
            f'<tr><th>time</th><td>{float(rec.get("elapsed_s", 0.0)):.1f} s</td></tr></table>')
    parts = [f'<div class="stage" id="stage-{esc(name)}" data-state="{esc(state)}"><h3>{esc(name)}</h3>', head]
    mine = {k: v for k, v in diff.items() if k.startswith(name + ".")}
    if mine:
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td><td>{esc(p)}</td></tr>" for k, (v, p) in mine.items())
        parts.append(f'<table class="config"><tr><th>key</th><th>this run</th><th>preset {esc(preset)}</th></tr>'
                     f"{rows}</table>")
    elif preset:
        parts.append(f"<p>Config as the {esc(preset)} preset.</p>")
    shots = previews(folder) if folder else []
    if state == "failed":
        parts.append(f'<p class="error">{esc(rec.get("error", ""))}</p>')
        if shots:
            parts.append(f'<p>Last preview before the failure (step {shots[-1][0]}):</p>'
                         f'<div class="strip"><img class="last-preview" src="{esc(rel(base, shots[-1][1]))}"></div>')
    if shots:
        pid = f"preview-{name}"
        scripts[pid] = [(step, rel(base, p)) for step, p in shots]
        parts.append(f'<div class="strip"><div><input type="range" min="0" max="{len(shots) - 1}" '
                     f'value="{len(shots) - 1}" oninput="gmSetPreview(\'{pid}\', this.value)"> '
                     f'<span id="{pid}-label">step {shots[-1][0]}</span> ({len(shots)} previews)</div>'
                     f'<img id="{pid}" class="preview" src="{esc(rel(base, shots[-1][1]))}"></div>')
    series = loss_series(folder) if folder else {}
    if series:
        parts.append(f'<div class="losses">{line_chart(series, wants_log(series), f"{name} losses")}</div>')
    else:
        parts.append('<p class="losses">No losses recorded yet.</p>')
    parts.append("</div>")
    return "".join(parts)


# ---- the avatar


def as_glb(path: Path) -> bytes:
    """A mesh file's bytes as GLB (GLB as it is; OBJ / PLY through trimesh)."""
    if path.suffix.lower() == ".glb":
        return path.read_bytes()
    import trimesh

    return trimesh.load(str(path), force="scene").export(file_type="glb")


def data_url(data: bytes) -> str:
    return "data:model/gltf-binary;base64," + base64.b64encode(data).decode()


def viewer(model: str, caption: str) -> str:
    return (f'<figure class="viewer"><model-viewer data-model="{model}" loading="eager" camera-controls '
            f'interaction-prompt="none" shadow-intensity="0" exposure="1.0" alt="{esc(caption)}">'
            f"</model-viewer><figcaption>{esc(caption)}</figcaption></figure>")


def avatar_section(root: Path, base: Path, models: dict[str, bytes], bench_models: list[tuple[str, str]]) -> str:
    """The viewer (the avatar, or a bench's subject and result), the turntable and the files of ``final/``."""
    final = root / "final"
    if "avatar" not in models and not bench_models:
        return ('<section id="avatar"><h2>Avatar</h2><p>No avatar yet (final/avatar.glb appears when the run is '
                "done).</p></section>")
    views = ([viewer(key, caption) for key, caption in bench_models]
             or [viewer("avatar", "the avatar (final/avatar.glb)")])
    parts = ['<section id="avatar"><h2>Avatar</h2>',
             '<p><button id="light" data-lit="0" onclick="gmLight(this)">unlit (switch to lit)</button> '
             "drag to orbit, scroll to zoom</p>", f'<div class="viewers">{"".join(views)}</div>']
    if (final / "turntable.mp4").is_file():
        parts.append(f'<h3>Turntable</h3><video src="{esc(rel(base, final / "turntable.mp4"))}" controls muted loop '
                     'width="384"></video>')
    files = sorted(p for p in final.iterdir() if p.is_file() and not p.name.startswith(".")) if final.is_dir() else []
    if files:
        links = "".join(f'<li><a href="{esc(rel(base, p))}" download>{esc(p.name)}</a> '
                        f"({p.stat().st_size / 1024:.0f} KB)</li>" for p in files)
        parts.append(f'<h3>Files</h3><ul class="downloads">{links}</ul>')
    parts.append("</section>")
    return "".join(parts)


# ---- a bench folder


def bench_section(bench: dict) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v:.4g}</td></tr>" for k, v in bench.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool))
    stages = bench.get("stages", {})
    stage_rows = "".join(
        f"<tr><td>{esc(s)}</td>" + "".join(f"<td>{esc(k)} {v:.4g}</td>" for k, v in fig.items()
                                          if isinstance(v, (int, float)))
        + "</tr>" for s, fig in stages.items() if isinstance(fig, dict))
    per_view = bench.get("per_view", {})
    charts = "".join(line_chart({k: (list(range(len(v))), v)}, False, f"{k} per turntable view", "view")
                     for k, v in per_view.items() if isinstance(v, list))
    return (f'<section id="bench"><h2>Bench figures</h2><table class="figures">{rows}</table>'
            f'<h3>Per stage</h3><table class="stage-figures">{stage_rows}</table>'
            f'<div class="per-view">{charts}</div></section>')


# ---- the page


def bench_glbs(page_root: Path, bench: Any) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """A bench folder's subject (the file bench.json names, else ``subject.glb``) and ``recon.glb`` as GLB
    bytes, and their viewers' ``(model, caption)``."""
    models, shown = {}, []
    subject = Path(bench["subject"]) if isinstance(bench, dict) and bench.get("subject") else None
    if subject is None or not subject.is_file():
        subject = page_root / "subject.glb"
    if subject.is_file():
        models["truth"] = as_glb(subject)
        shown.append(("truth", f"the subject ({subject.name})"))
    if (page_root / "recon.glb").is_file():
        models["recon"] = (page_root / "recon.glb").read_bytes()
        shown.append(("recon", "the result, in the subject's frame (recon.glb)"))
    return models, shown


def write_files(page_root: Path, models: dict[str, bytes]) -> None:
    """``report_files/``: the viewer and its licences (copied when missing or changed) and ``models.js``."""
    files = page_root / FILES
    files.mkdir(exist_ok=True)
    for name in (VIEWER_JS, *LICENCES):
        target = files / name
        if not target.is_file() or target.stat().st_size != (ASSETS / name).stat().st_size:
            shutil.copyfile(ASSETS / name, target)
    table = {k: data_url(v) for k, v in models.items()}
    atomic_write_bytes(files / "models.js", f"window.GENEMAN_MODELS = {json.dumps(table)};\n".encode())


def write_run_report(root: Path, bench_root: Path | None = None) -> Path:
    """Write ``report.html`` (and ``report_files/``) for the run folder ``root``; with ``bench_root``
    (a bench folder holding ``root`` as its run), the page goes there and adds the subject and figures.
    Returns the page's path. Each file is written whole or not at all."""
    root = Path(root)
    page_root = Path(bench_root) if bench_root else root
    manifest = read_json(root / "run.json")
    if not isinstance(manifest, dict):
        raise ValueError(f"{root / 'run.json'} is missing or not JSON: not a run folder")
    cfg = {}
    try:
        cfg = yaml.safe_load((root / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        pass
    preset, diff = preset_differences(cfg) if isinstance(cfg, dict) and cfg else ("", {})
    bench = read_json(page_root / "bench.json") if bench_root else None
    models, bench_models = bench_glbs(page_root, bench) if bench_root else ({}, [])
    if (root / "final" / "avatar.glb").is_file():
        models["avatar"] = (root / "final" / "avatar.glb").read_bytes()
    write_files(page_root, models)
    scripts: dict[str, list] = {}
    stage_html = "".join(stage_section(root, page_root, n, r, preset, diff, scripts)
                         for n, r in manifest.get("stages", {}).items() if n != "preprocess")
    status = str(manifest.get("status", "?"))
    total = stage_seconds(manifest)
    title = f"geneman {'bench' if bench_root else 'run'}: {page_root.name}"
    body = [f"<h1>{esc(title)}</h1>",
            f'<p>status <b class="state-{esc(status)}" id="status">{esc(status)}</b> · {total:.0f} s of stages · '
            f'updated {esc(manifest.get("updated", ""))}</p>']
    if manifest.get("error"):
        body.append(f'<p class="error" id="run-error">{esc(manifest["error"])}</p>')
    body.append(photo_section(root, page_root, manifest))
    if isinstance(bench, dict):
        body.append(bench_section(bench))
    body.append(avatar_section(root, page_root, models, bench_models))
    body.append(f'<section id="stages"><h2>Stages</h2>{stage_html}</section>')
    body.append('<footer><p>Viewer: &lt;model-viewer&gt; (Apache-2.0) with three.js (MIT); licences in '
                f'<a href="{FILES}/{LICENCES[0]}">{FILES}/</a>.</p></footer>')
    page = html_page(title, "".join(body),
                     f'<script src="{FILES}/{VIEWER_JS}"></script><script src="{FILES}/models.js"></script>'
                     f"<script>window.GM_PREVIEWS = {json.dumps(scripts)};{SCRIPT}</script>")
    path = page_root / PAGE
    atomic_write_bytes(path, page.encode())
    return path


def page_weight(page_root: Path, exclude: tuple[str, ...] = ("models.js",)) -> int:
    """Bytes the page loads beside the avatar's own data: the page, its scripts and the images it shows."""
    page = (page_root / PAGE).read_text()
    total = len(page.encode())
    for url in set(re.findall(r'(?:src)="([^"]+)"', page)):
        path = page_root / url
        if not url.startswith("data:") and path.is_file() and path.name not in exclude:
            total += os.path.getsize(path)
    return total


def is_bench(folder: Path) -> bool:
    """A bench folder: bench.json (or, before its first figures, subject and reference) beside ``run/``."""
    return (folder / "run" / "run.json").is_file() and any((folder / n).is_file()
                                                             for n in ("bench.json", "reference.png"))
