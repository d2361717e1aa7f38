"""A small self-contained WebGL viewer of cortical maps for the HTML report: drag to rotate, wheel to zoom.

Everything the viewer needs is embedded in the page: the mesh (vertices quantised to int16 over
the mesh's bounding sphere, faces as uint16, or uint32 beyond 65535 vertices), one uint8 code per
vertex and layer (255 = outside cortex, drawn grey) and the colour tables, all base64 in a JSON
block, with about 8 kB of inline JavaScript (WebGL 2, or WebGL 1 as a fallback). No network, no
external file, no library. For fsaverage5 (10242 vertices and 20480 faces per hemisphere) the data
add about 250 kB per hemisphere plus 14 kB per layer.

Layers are grouped by method: *before* (raw), *after* (the method) and *difference* (after -
before); before and after share one colour scale, differences a scale centred on 0. When the
browser has no WebGL (or no JavaScript), the viewer stays hidden and the static renderings given
as ``fallback_html`` are shown instead; with WebGL they are folded into a "static renderings"
disclosure. After its first frame the viewer writes the number of drawn (non-background) pixels
into the canvas attribute ``data-drawn-pixels``, which tests read.
"""
from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping

import numpy as np

from surfharm.viz.mesh import MeshError

#: Largest mesh drawn (vertices per hemisphere); icosahedral maps finer than fsaverage5 are drawn at fsaverage5.
MAX_VERTICES = 400_000
NAN_CODE = 255


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _lut(cmap: str) -> str:
    from matplotlib import colormaps

    rgb = (colormaps[cmap](np.linspace(0, 1, 255))[:, :3] * 255).round().astype(np.uint8)
    return _b64(np.vstack([rgb, [[170, 170, 170]]]).astype(np.uint8))  # code 255: outside cortex


def _codes(values: np.ndarray, clim: tuple[float, float]) -> np.ndarray:
    lo, hi = clim
    vals = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(vals)
    scaled = np.clip((np.where(finite, vals, lo) - lo) / (hi - lo), 0, 1) * 254
    return np.where(finite, scaled.round(), NAN_CODE).astype(np.uint8)


def _mesh_entry(vertices: np.ndarray, faces: np.ndarray) -> dict:
    verts = np.asarray(vertices, dtype=np.float64)
    centre = (verts.max(axis=0) + verts.min(axis=0)) / 2
    radius = float(np.abs(verts - centre).max()) or 1.0
    quant = np.round((verts - centre) / radius * 32767).astype("<i2")
    index_type = "<u2" if len(verts) <= 65535 else "<u4"
    return {"n": int(len(verts)), "centre": [float(c) for c in centre], "radius": radius,
            "v": _b64(quant), "f": _b64(np.asarray(faces).astype(index_type)), "u32": index_type == "<u4"}


def scene(meshes: Mapping[str, object], before: Mapping[str, np.ndarray],
          after: Mapping[str, Mapping[str, np.ndarray]], *, cmap: str = "viridis", diff_cmap: str = "RdBu_r",
          units: str = "mm", quantity: str = "thickness") -> dict:
    """The viewer's data: ``meshes`` {hemi: Surface}, ``before`` {hemi: values}, ``after``
    {method: {hemi: values}} (values with one entry per mesh vertex, NaN outside cortex)."""
    from surfharm.viz.surface import robust_clim, symmetric_clim

    hemis = list(meshes)
    for side in hemis:
        n = meshes[side].n_vertices
        if n > MAX_VERTICES:
            raise MeshError(f"the 3D viewer draws meshes of at most {MAX_VERTICES} vertices; {side} has {n}")
        for name, values in [("before", before[side])] + [(m, v[side]) for m, v in after.items()]:
            if np.asarray(values).shape != (n,):
                raise MeshError(f"{name} ({side}) has shape {np.asarray(values).shape}; expected ({n},), one value "
                                "per vertex of the mesh")
    clim = robust_clim([before[s] for s in hemis] + [v[s] for v in after.values() for s in hemis])
    diffs = {m: {s: np.asarray(v[s], float) - np.asarray(before[s], float) for s in hemis} for m, v in after.items()}
    diff_clim = symmetric_clim([d[s] for d in diffs.values() for s in hemis]) if diffs else (-1.0, 1.0)
    layers = [{"key": "before", "method": "", "stage": "before", "label": "before (raw)", "lut": "seq",
               "clim": list(clim), "data": [_b64(_codes(before[s], clim)) for s in hemis]}]
    for method, values in after.items():
        layers.append({"key": f"after:{method}", "method": method, "stage": "after", "label": f"after ({method})",
                       "lut": "seq", "clim": list(clim), "data": [_b64(_codes(values[s], clim)) for s in hemis]})
        layers.append({"key": f"diff:{method}", "method": method, "stage": "difference",
                       "label": f"difference ({method} \u2212 raw)", "lut": "div", "clim": list(diff_clim),
                       "data": [_b64(_codes(diffs[method][s], diff_clim)) for s in hemis]})
    entries = [_mesh_entry(meshes[s].vertices, meshes[s].faces) for s in hemis]
    if len(hemis) == 2:  # side by side: move the right hemisphere clear of the left one along x
        left, right = (np.asarray(meshes[s].vertices, dtype=np.float64) for s in hemis)
        shift = left[:, 0].max() - right[:, 0].min() + 0.05 * (left[:, 0].max() - left[:, 0].min())
        if shift > 0:
            entries[1]["centre"][0] += float(shift)
    return {"hemis": hemis, "meshes": entries,
            "layers": layers, "luts": {"seq": _lut(cmap), "div": _lut(diff_cmap)}, "units": units,
            "quantity": quantity}


def scene_for_maps(before_row, after_rows: Mapping[str, np.ndarray], surface="inflated", hemi: str = "lh",
                   **kw) -> dict:
    """:func:`scene` for one scan's raw map and its harmonized maps (arrays as the report holds them:
    one hemisphere, or both stacked with ``hemi="both"``; any icosahedral level or the surface's vertices)."""
    from surfharm.viz.surface import _as_hemis

    before, meshes = _as_hemis(np.asarray(before_row, dtype=np.float64), hemi, surface, "before")
    after = {m: _as_hemis(np.asarray(v, dtype=np.float64), hemi, surface, m)[0] for m, v in after_rows.items()}
    return scene(meshes, before, after, **kw)


def viewer_html(data: dict, *, element_id: str = "viewer3d", fallback_html: str = "", caption: str = "") -> str:
    """The viewer as one HTML fragment (data, markup, script); ``fallback_html`` is shown without WebGL."""
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    eid = html.escape(element_id)
    methods = [layer["method"] for layer in data["layers"] if layer["stage"] == "after"]
    method_buttons = "".join(f'<button type="button" data-method="{html.escape(m)}">{html.escape(m)}</button>'
                             for m in methods) if len(methods) > 1 else ""
    stage_buttons = "".join(f'<button type="button" data-stage="{s}">{s}</button>'
                            for s in (("before", "after", "difference") if methods else ("before",)))
    fallback = (f'<details class="v3d-static" open><summary>static renderings</summary>{fallback_html}</details>'
                if fallback_html else "")
    return f"""<figure class="viewer3d" id="{eid}">
<div class="v3d-live" hidden>
<div class="v3d-controls">{('<span class="v3d-group">method: ' + method_buttons + '</span>') if method_buttons else ''}
<span class="v3d-group">{stage_buttons}</span>
<span class="v3d-group"><button type="button" data-view="reset">reset view</button></span></div>
<canvas class="v3d-canvas" width="960" height="460"
 aria-label="3D view of the cortical map: drag to rotate, wheel to zoom"></canvas>
<div class="v3d-bar"><span class="v3d-lo"></span><span class="v3d-ramp"></span><span class="v3d-hi"></span>
<span class="v3d-label"></span></div>
</div>
<p class="v3d-nowebgl note">The 3D viewer needs JavaScript and WebGL, which this browser does not offer; the static
renderings below show the same maps.</p>
{fallback}
<figcaption>{html.escape(caption)}</figcaption>
<script type="application/json" class="v3d-data">{payload}</script>
<script>{_SCRIPT.replace("__ID__", json.dumps(element_id))}</script>
</figure>"""


#: Styles of the viewer (added to the report's CSS).
CSS = """
.viewer3d { margin: 1em 0 2em 0; }
.v3d-canvas { width: 100%; height: 460px; display: block; border: 1px solid #ddd; background: #fff; cursor: grab;
              touch-action: none; }
.v3d-controls { margin: .3em 0; display: flex; flex-wrap: wrap; gap: .4em 1.2em; }
.v3d-controls button { font: inherit; font-size: .9em; padding: .15em .7em; border: 1px solid #999; background: #fff;
                       border-radius: 3px; cursor: pointer; }
.v3d-controls button.on { background: #2b5d9b; color: #fff; border-color: #2b5d9b; }
.v3d-bar { display: flex; align-items: center; gap: .5em; font-size: .85em; margin-top: .3em; }
.v3d-ramp { display: inline-block; width: 260px; height: 12px; border: 1px solid #aaa; }
.viewer3d.webgl .v3d-nowebgl { display: none; }
"""

_SCRIPT = r"""
(function () {
  var root = document.getElementById(__ID__);
  if (!root) return;
  var data = JSON.parse(root.querySelector("script.v3d-data").textContent);
  var canvas = root.querySelector("canvas");
  var opts = {antialias: true, preserveDrawingBuffer: true};
  var gl = null, webgl2 = false;
  try { gl = canvas.getContext("webgl2", opts); webgl2 = !!gl;
        if (!gl) gl = canvas.getContext("webgl", opts) || canvas.getContext("experimental-webgl", opts); }
  catch (e) { gl = null; }
  var need32 = data.meshes.some(function (m) { return m.u32; });
  if (!gl || (need32 && !webgl2 && !gl.getExtension("OES_element_index_uint"))) return;
  root.classList.add("webgl");
  root.querySelector(".v3d-live").hidden = false;
  var details = root.querySelector("details.v3d-static");
  if (details) details.open = false;

  function bytes(b64) { var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i); return out; }
  function compile(type, src) { var sh = gl.createShader(type); gl.shaderSource(sh, src); gl.compileShader(sh);
    if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(sh)); return sh; }
  var prog = gl.createProgram();
  gl.attachShader(prog, compile(gl.VERTEX_SHADER,
    "attribute vec3 p; attribute vec3 n; attribute vec3 c; uniform mat3 R; uniform vec3 S;" +
    "varying vec3 vc; varying vec3 vn;" +
    "void main() { vec3 q = R * p; gl_Position = vec4(q.x * S.x + S.z, q.y * S.y, -q.z * 0.5, 1.0);" +
    " vn = R * n; vc = c; }"));
  gl.attachShader(prog, compile(gl.FRAGMENT_SHADER,
    "precision mediump float; varying vec3 vc; varying vec3 vn;" +
    "void main() { vec3 N = normalize(vn); float d = abs(N.z);" +
    " gl_FragColor = vec4(vc * (0.3 + 0.7 * d) + vec3(0.12) * pow(d, 24.0), 1.0); }"));
  gl.linkProgram(prog);
  gl.useProgram(prog);
  var loc = {p: gl.getAttribLocation(prog, "p"), n: gl.getAttribLocation(prog, "n"), c: gl.getAttribLocation(prog, "c"),
             R: gl.getUniformLocation(prog, "R"), S: gl.getUniformLocation(prog, "S")};

  // Meshes: positions in one frame (each hemisphere's own coordinates, rescaled to fit the unit sphere).
  var lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
  var meshes = data.meshes.map(function (m) {
    var q = new Int16Array(bytes(m.v).buffer), pos = new Float32Array(q.length);
    for (var i = 0; i < q.length; i++) { var a = i % 3; pos[i] = q[i] / 32767 * m.radius + m.centre[a];
      if (pos[i] < lo[a]) lo[a] = pos[i]; if (pos[i] > hi[a]) hi[a] = pos[i]; }
    var fb = bytes(m.f).buffer, faces = m.u32 ? new Uint32Array(fb) : new Uint16Array(fb);
    return {n: m.n, pos: pos, faces: faces};
  });
  var centre = [0, 1, 2].map(function (a) { return (lo[a] + hi[a]) / 2; }), radius = 0;
  meshes.forEach(function (m) {
    for (var i = 0; i < m.pos.length; i++) m.pos[i] -= centre[i % 3];
    for (var j = 0; j < m.n; j++) { var x = m.pos[3 * j], y = m.pos[3 * j + 1], z = m.pos[3 * j + 2];
      radius = Math.max(radius, Math.sqrt(x * x + y * y + z * z)); }
  });
  meshes.forEach(function (m) {
    var i, nrm = new Float32Array(m.pos.length), P = m.pos, F = m.faces;
    for (i = 0; i < P.length; i++) P[i] /= radius;
    for (i = 0; i < F.length; i += 3) {
      var a = 3 * F[i], b = 3 * F[i + 1], c = 3 * F[i + 2];
      var ux = P[b] - P[a], uy = P[b + 1] - P[a + 1], uz = P[b + 2] - P[a + 2];
      var vx = P[c] - P[a], vy = P[c + 1] - P[a + 1], vz = P[c + 2] - P[a + 2];
      var nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
      [a, b, c].forEach(function (k) { nrm[k] += nx; nrm[k + 1] += ny; nrm[k + 2] += nz; });
    }
    m.buffers = {p: gl.createBuffer(), n: gl.createBuffer(), c: gl.createBuffer(), f: gl.createBuffer()};
    gl.bindBuffer(gl.ARRAY_BUFFER, m.buffers.p); gl.bufferData(gl.ARRAY_BUFFER, P, gl.STATIC_DRAW);
    gl.bindBuffer(gl.ARRAY_BUFFER, m.buffers.n); gl.bufferData(gl.ARRAY_BUFFER, nrm, gl.STATIC_DRAW);
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, m.buffers.f); gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, F, gl.STATIC_DRAW);
  });
  var luts = {seq: bytes(data.luts.seq), div: bytes(data.luts.div)};

  // Views: rotation matrices (rows = screen x, y, towards the viewer) in RAS coordinates.
  var views = {lh: [0, -1, 0, 0, 0, 1, -1, 0, 0], rh: [0, 1, 0, 0, 0, 1, 1, 0, 0], both: [1, 0, 0, 0, 1, 0, 0, 0, 1]};
  var home = data.hemis.length > 1 ? views.both : views[data.hemis[0]] || views.lh;
  var R = home.slice(), zoom = 1.3, method = null, stage = "before", layer = null, pending = false, frames = 0;
  var methods = data.layers.filter(function (l) { return l.stage === "after"; }).map(function (l) { return l.method; });
  if (methods.length) { method = methods[0]; stage = "after"; }

  function mul(A, B) { var C = new Array(9);
    for (var r = 0; r < 3; r++) for (var c = 0; c < 3; c++)
      C[3 * r + c] = A[3 * r] * B[c] + A[3 * r + 1] * B[3 + c] + A[3 * r + 2] * B[6 + c];
    return C; }
  function rotX(t) { var c = Math.cos(t), s = Math.sin(t); return [1, 0, 0, 0, c, -s, 0, s, c]; }
  function rotY(t) { var c = Math.cos(t), s = Math.sin(t); return [c, 0, s, 0, 1, 0, -s, 0, c]; }

  function pickLayer() {
    var want = stage === "before" ? "before" : (stage === "after" ? "after:" : "diff:") + method;
    layer = data.layers.filter(function (l) { return l.key === want; })[0] || data.layers[0];
    var lut = luts[layer.lut];
    meshes.forEach(function (m, h) {
      var codes = bytes(layer.data[h]), col = new Uint8Array(3 * m.n);
      for (var i = 0; i < m.n; i++) { var k = 3 * codes[i]; col[3 * i] = lut[k]; col[3 * i + 1] = lut[k + 1];
        col[3 * i + 2] = lut[k + 2]; }
      gl.bindBuffer(gl.ARRAY_BUFFER, m.buffers.c); gl.bufferData(gl.ARRAY_BUFFER, col, gl.STATIC_DRAW);
    });
    var stops = [];
    for (var s = 0; s <= 10; s++) { var k = 3 * Math.round(s * 25.4);
      stops.push("rgb(" + lut[k] + "," + lut[k + 1] + "," + lut[k + 2] + ")"); }
    root.querySelector(".v3d-ramp").style.background = "linear-gradient(to right," + stops.join(",") + ")";
    root.querySelector(".v3d-lo").textContent = layer.clim[0].toPrecision(3);
    root.querySelector(".v3d-hi").textContent = layer.clim[1].toPrecision(3);
    root.querySelector(".v3d-label").textContent = layer.label + ": " +
      (layer.stage === "difference" ? "difference" : data.quantity) + " (" + data.units + "); grey: outside cortex";
    Array.prototype.forEach.call(root.querySelectorAll("button[data-stage]"), function (b) {
      b.classList.toggle("on", b.getAttribute("data-stage") === stage); });
    Array.prototype.forEach.call(root.querySelectorAll("button[data-method]"), function (b) {
      b.classList.toggle("on", b.getAttribute("data-method") === method); });
    redraw();
  }

  function draw() {
    pending = false;
    var dpr = window.devicePixelRatio || 1, w = Math.max(1, Math.round(canvas.clientWidth * dpr)),
        h = Math.max(1, Math.round(canvas.clientHeight * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    gl.viewport(0, 0, w, h);
    gl.clearColor(1, 1, 1, 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.enable(gl.DEPTH_TEST);
    var aspect = w / h;
    gl.uniformMatrix3fv(loc.R, false, [R[0], R[3], R[6], R[1], R[4], R[7], R[2], R[5], R[8]]);
    gl.uniform3f(loc.S, zoom / Math.max(aspect, 1), zoom * Math.min(aspect, 1), 0);
    meshes.forEach(function (m) {
      gl.bindBuffer(gl.ARRAY_BUFFER, m.buffers.p); gl.enableVertexAttribArray(loc.p);
      gl.vertexAttribPointer(loc.p, 3, gl.FLOAT, false, 0, 0);
      gl.bindBuffer(gl.ARRAY_BUFFER, m.buffers.n); gl.enableVertexAttribArray(loc.n);
      gl.vertexAttribPointer(loc.n, 3, gl.FLOAT, false, 0, 0);
      gl.bindBuffer(gl.ARRAY_BUFFER, m.buffers.c); gl.enableVertexAttribArray(loc.c);
      gl.vertexAttribPointer(loc.c, 3, gl.UNSIGNED_BYTE, true, 0, 0);
      gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, m.buffers.f);
      gl.drawElements(gl.TRIANGLES, m.faces.length,
                      m.faces.BYTES_PER_ELEMENT === 4 ? gl.UNSIGNED_INT : gl.UNSIGNED_SHORT, 0);
    });
    if (frames++ === 0) {
      var px = new Uint8Array(4 * w * h), drawn = 0;
      gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
      for (var i = 0; i < px.length; i += 4) if (px[i] < 250 || px[i + 1] < 250 || px[i + 2] < 250) drawn++;
      canvas.setAttribute("data-drawn-pixels", String(drawn));
    }
  }
  function redraw() { if (!pending) { pending = true; requestAnimationFrame(draw); } }

  var drag = null;
  canvas.addEventListener("pointerdown", function (e) {
    drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); canvas.style.cursor = "grabbing"; });
  canvas.addEventListener("pointermove", function (e) {
    if (!drag) return;
    var dx = e.clientX - drag[0], dy = e.clientY - drag[1]; drag = [e.clientX, e.clientY];
    R = mul(rotX(dy * 0.01), mul(rotY(dx * 0.01), R)); redraw(); });
  function release() { drag = null; canvas.style.cursor = "grab"; }
  canvas.addEventListener("pointerup", release); canvas.addEventListener("pointercancel", release);
  canvas.addEventListener("wheel", function (e) { e.preventDefault();
    zoom = Math.min(8, Math.max(0.3, zoom * Math.exp(-e.deltaY * 0.0015))); redraw(); }, {passive: false});
  root.addEventListener("click", function (e) {
    var b = e.target.closest("button"); if (!b) return;
    if (b.hasAttribute("data-stage")) { stage = b.getAttribute("data-stage"); pickLayer(); }
    else if (b.hasAttribute("data-method")) { method = b.getAttribute("data-method");
      if (stage === "before") stage = "after"; pickLayer(); }
    else if (b.getAttribute("data-view") === "reset") { R = home.slice(); zoom = 1.3; redraw(); }
  });
  window.addEventListener("resize", redraw);
  pickLayer();
})();
"""
