"""The demo page served at ``GET /``: choose a clip, see its frames, the description, the labels and the
sentiment. Static HTML (no key inside it); the page asks for the API key and sends it as a bearer token."""

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
    $("timings").textContent = "total " + data.timings.total_s + " s (decode " + data.timings.decode_s + " s, model " + data.timings.model_s + " s)";
    $("result").style.display = "block";
    document.body.dataset.done = "1";
  } catch (e) { $("error").textContent = String(e); }
  finally { $("go").disabled = false; $("go").textContent = "Analyze"; }
});
</script>
</body>
</html>
"""
