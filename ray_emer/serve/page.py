"""The demo page served at ``GET /``: choose a clip, see its frames, the description, the labels and the
sentiment; a long recording's timeline as a strip of segments (sentiment colour, valence line, the frame of each;
a click shows a segment's explanation). Static HTML (no key inside it); the page asks for the API key and
sends it as a bearer token."""

DEMO_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ray_emer: explainable emotion recognition</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 52rem; color: #222; }
  h1 { font-size: 1.4rem; } label { display: block; margin: .6rem 0 .2rem; font-weight: 600; }
  input[type=text], input[type=password] { width: 100%; padding: .4rem; box-sizing: border-box; }
  button { margin-top: 1rem; padding: .5rem 1.4rem; font-size: 1rem; }
  #frames img { width: 88px; height: 88px; margin: 2px; border-radius: 4px; }
  .chip { display: inline-block; background: #e6eefc; border-radius: 1rem; padding: .2rem .7rem; margin: .15rem; }
  #sentiment { font-weight: 700; } #error { color: #b00020; white-space: pre-wrap; }
  #result { display: none; margin-top: 1.2rem; border-top: 1px solid #ddd; padding-top: 1rem; }
  .muted { color: #777; font-size: .85rem; }
  #strip { display: flex; height: 2.4rem; margin-top: .5rem; } #strip div { cursor: pointer; overflow: hidden;
    color: #fff; font-size: .7rem; padding: .2rem; border-right: 1px solid #fff; box-sizing: border-box; }
  #thumbs { display: flex; } #thumbs img { height: 48px; min-width: 0; flex: 1 1 0; object-fit: cover; cursor: pointer; }
  #segment { border-left: 3px solid #ccc; padding-left: .6rem; }
</style>
</head>
<body>
<h1>ray_emer &middot; {{MODEL}}</h1>
<p class="muted">Upload a short clip: the model explains what the person feels from face, voice and words,
and names the emotions.</p>
<label for="key">API key</label><input id="key" type="password" placeholder="the server prints it at start">
<label for="clip">Clip</label><input id="clip" type="file" accept="video/*,audio/*">
<label for="subtitle">Subtitle (optional: what is said)</label><input id="subtitle" type="text">
<button id="go">Analyze</button>
<div id="error"></div>
<div id="result">
  <div id="frames"></div>
  <h2>Why</h2><p id="description"></p>
  <h2>What</h2><div id="labels"></div>
  <p>Sentiment: <span id="sentiment"></span></p>
  <p class="muted" id="timings"></p>
  <div id="timeline" style="display:none"><h2>Timeline</h2><div id="strip"></div>
    <svg id="valence" width="100%" height="40" viewBox="0 0 1000 40" preserveAspectRatio="none"></svg>
    <div id="thumbs"></div><p id="segment" class="muted">Click a segment to read its explanation.</p></div>
</div>
<script>
const $ = (id) => document.getElementById(id);
$("key").value = localStorage.getItem("ray_emer_key") || "";
$("go").addEventListener("click", async () => {
  $("error").textContent = ""; $("result").style.display = "none";
  const file = $("clip").files[0];
  if (!file) { $("error").textContent = "choose a clip first"; return; }
  localStorage.setItem("ray_emer_key", $("key").value);
  const form = new FormData();
  form.append("file", file);
  if ($("subtitle").value) form.append("subtitle", $("subtitle").value);
  $("go").disabled = true; $("go").textContent = "Analyzing...";
  try {
    const resp = await fetch("v1/analyze?frames=1", {method: "POST", body: form,
                             headers: {"Authorization": "Bearer " + $("key").value}});
    const data = await resp.json();
    if (!resp.ok) { $("error").textContent = resp.status + ": " + (data.error || JSON.stringify(data)); return; }
    $("frames").innerHTML = "";
    for (const src of data.frames || []) { const img = document.createElement("img"); img.src = src; $("frames").appendChild(img); }
    $("description").textContent = data.description;
    $("labels").innerHTML = "";
    for (const lab of data.labels) { const s = document.createElement("span"); s.className = "chip"; s.textContent = lab; $("labels").appendChild(s); }
    $("sentiment").textContent = data.sentiment;
    const t = data.timings;
    $("timings").textContent = data.timeline ? "total " + t.total_s + " s for " + t.segments + " segments"
      : "total " + t.total_s + " s (decode " + t.decode_s + " s, model " + t.model_s + " s)";
    drawTimeline(data.timeline || []);
    $("result").style.display = "block";
    document.body.dataset.done = "1";
  } catch (e) { $("error").textContent = String(e); }
  finally { $("go").disabled = false; $("go").textContent = "Analyze"; }
});
const COLOUR = {positive: "#3a9d5d", negative: "#c8453b", neutral: "#8c8c8c"};
const VALENCE = {positive: 1, negative: -1, neutral: 0};
function drawTimeline(segments) {
  $("timeline").style.display = segments.length ? "block" : "none";
  $("strip").innerHTML = ""; $("thumbs").innerHTML = ""; $("valence").innerHTML = "";
  if (!segments.length) return;
  const total = segments[segments.length - 1].end_s, points = [];
  const show = (s) => { $("segment").textContent = s.start_s.toFixed(1) + "-" + s.end_s.toFixed(1) + " s: " +
    (s.labels.join(", ") || "no emotion") + " (" + (s.sentiment || "-") + "). " + (s.description || s.error || ""); };
  for (const s of segments) {
    const share = (s.end_s - s.start_s) / total, box = document.createElement("div");
    box.style.flex = share + " 1 0"; box.style.background = s.error ? "#222" : (COLOUR[s.sentiment] || "#444");
    box.textContent = s.labels[0] || ""; box.title = s.labels.join(", "); box.className = "segment";
    box.addEventListener("click", () => show(s)); $("strip").appendChild(box);
    if (s.frame) { const img = document.createElement("img"); img.src = s.frame; img.style.flex = share + " 1 0";
      img.addEventListener("click", () => show(s)); $("thumbs").appendChild(img); }
    points.push(((s.start_s + s.end_s) / 2 / total * 1000).toFixed(1) + "," + (20 - 16 * (VALENCE[s.sentiment] || 0)));
  }
  $("valence").innerHTML = '<line x1="0" x2="1000" y1="20" y2="20" stroke="#bbb" stroke-dasharray="4 4"/>' +
    '<polyline fill="none" stroke="#2b5fa8" stroke-width="2" points="' + points.join(" ") + '"/>';
}
</script>
</body>
</html>
"""
