"""A recording's emotion timeline as one self-contained HTML page (no server, no script from elsewhere).

A strip of the segments over time, each coloured by its sentiment and named by its first label; a valence line
over it (+1 positive, 0 neutral, -1 negative, per segment); the frame of each segment under it; a click on a
segment or its frame shows its time, labels, subtitle and description. ``ray-emer label`` writes one per
segmented recording beside its JSON and WebVTT (``OUT/_timelines/<id>.html``).
"""

from __future__ import annotations

import base64
import html
import json

from ray_emer.timeline import VALENCE

COLOURS = {"positive": "#3a9d5d", "negative": "#c8453b", "neutral": "#8c8c8c", "": "#444"}
WIDTH, STRIP, LINE = 1000, 56, 70


def _x(t: float, duration: float) -> float:
    return round(WIDTH * t / duration, 2) if duration > 0 else 0.0


def _clock(t: float) -> str:
    return f"{int(t // 60)}:{t % 60:04.1f}"


def timeline_html(timeline: dict, thumbnails: dict[str, bytes] | None = None) -> str:
    """``timeline`` (``ray_emer.timeline``) -> the page; ``thumbnails``: ``{segment clip id or "start-end": JPEG}``
    keyed as ``timeline_key`` makes them."""
    segments, duration = timeline["segments"], float(timeline["duration_s"])
    thumbnails = thumbnails or {}
    rects, frames, points = [], [], []
    for i, s in enumerate(segments):
        x0, x1 = _x(s["start_s"], duration), _x(s["end_s"], duration)
        colour = "#222" if "error" in s else COLOURS.get(s["sentiment"], COLOURS[""])
        name = "error" if "error" in s else (s["labels"][0] if s["labels"] else "")
        rects.append(f'<g class="seg" data-i="{i}"><rect x="{x0}" y="0" width="{max(x1 - x0 - 1, 1)}" '
                     f'height="{STRIP}" fill="{colour}"><title>{html.escape(_clock(s["start_s"]))} '
                     f'{html.escape(name)}</title></rect>'
                     + (f'<text x="{x0 + 3}" y="{STRIP / 2 + 4}">{html.escape(name)}</text>' if x1 - x0 > 40 else "")
                     + "</g>")
        if "error" not in s:
            y = STRIP + LINE / 2 - VALENCE.get(s["sentiment"], 0.0) * (LINE / 2 - 6)
            points.append(f"{round((x0 + x1) / 2, 2)},{round(y, 2)}")
        jpeg = thumbnails.get(timeline_key(s))
        if jpeg:
            src = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
            frames.append(f'<img class="frame" data-i="{i}" src="{src}" style="left:{x0}px" '
                          f'alt="frame at {_clock(s["start_s"])}">')
    mid = STRIP + LINE / 2
    svg = (f'<svg id="strip" width="{WIDTH}" height="{STRIP + LINE}" viewBox="0 0 {WIDTH} {STRIP + LINE}">'
           + "".join(rects)
           + f'<line x1="0" x2="{WIDTH}" y1="{mid}" y2="{mid}" stroke="#bbb" stroke-dasharray="4 4"/>'
           + f'<polyline id="valence" fill="none" stroke="#2b5fa8" stroke-width="2" points="{" ".join(points)}"/>'
           + f'<text x="4" y="{STRIP + 12}" class="axis">valence +1</text>'
           + f'<text x="4" y="{STRIP + LINE - 4}" class="axis">-1</text></svg>')
    data = json.dumps([{**s, "clock": f"{_clock(s['start_s'])} - {_clock(s['end_s'])}"} for s in segments])
    title = html.escape(str(timeline["recording_id"]))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Timeline: {title}</title><style>
body{{font-family:sans-serif;margin:20px;max-width:{WIDTH + 40}px}} svg text{{fill:#fff;font-size:12px}}
svg text.axis{{fill:#666;font-size:10px}} .seg{{cursor:pointer}} .seg:hover rect{{opacity:.8}}
#frames{{position:relative;height:100px;width:{WIDTH}px;overflow:hidden}}
.frame{{position:absolute;top:2px;width:96px;height:96px;cursor:pointer;border:1px solid #fff}}
#detail{{margin-top:12px;padding:10px;border:1px solid #ccc;min-height:60px}} .key{{color:#666}}
</style></head><body><h2>Emotion timeline: {title}</h2>
<p>{len(segments)} segments over {_clock(duration)}. Colour: sentiment (green positive, grey neutral, red negative);
blue line: valence. Click a segment or a frame to read its explanation.</p>
{svg}<div id="frames">{"".join(frames)}</div>
<div id="detail">Click a segment.</div>
<script>
const SEGMENTS = {data};
function show(i) {{
  const s = SEGMENTS[i], d = document.getElementById('detail');
  d.innerHTML = '';
  const add = (key, value) => {{ const p = document.createElement('p');
    const k = document.createElement('span'); k.className = 'key'; k.textContent = key + ': ';
    p.appendChild(k); p.appendChild(document.createTextNode(value)); d.appendChild(p); }};
  add('time', s.clock);
  add('labels', (s.labels || []).join(', ') + (s.sentiment ? ' (' + s.sentiment + ')' : ''));
  if (s.subtitle) add('subtitle', s.subtitle);
  if (s.error) add('error', s.error);
  const desc = document.createElement('p'); desc.id = 'description'; desc.textContent = s.description;
  d.appendChild(desc);
}}
document.querySelectorAll('.seg, .frame').forEach(e => e.addEventListener('click', () => show(+e.dataset.i)));
</script></body></html>"""


def timeline_key(segment: dict) -> str:
    """How a segment's frame is found: its span in milliseconds (``<start_ms>-<end_ms>``, as in its clip id)."""
    return f"{int(round(segment['start_s'] * 1000))}-{int(round(segment['end_s'] * 1000))}"
