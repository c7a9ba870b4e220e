// The web page's script (index.html); served from here, so the CSP needs no 'unsafe-inline'.
"use strict";
const GREEN = "#00b900";
const HINTS = {
  transparent: "Transparent PNG: the car keeps soft, anti-aliased edges.",
  mask: "Black and white mask PNG: white is car.",
  green: "The car over studio green (#00b900), as a PNG.",
  colour: "The car over the colour you pick, as a PNG.",
  image: "The car over a picture of your choice, scaled to cover, as a PNG.",
};
const $ = (id) => document.getElementById(id);
const items = [];     // {id, file, label, card, parts, resultUrl, photoUrl}
let nextId = 1;

// -- background ---------------------------------------------------------------------------------
function bgChoice() { return document.querySelector("input[name=bg]:checked").value; }
let backgroundImage = null;  // a File, when the image option is chosen
function bgParam() {
  const choice = bgChoice();
  return choice === "green" ? GREEN : choice === "colour" ? $("colour").value : choice;
}
function addBackground(form, background) {
  if (background === "image" && backgroundImage) form.append("background", backgroundImage, backgroundImage.name);
  else form.append("bg", background === "image" ? "transparent" : background);
}
$("bg-choice").addEventListener("change", (event) => {
  if (event.target.id === "bg-image") {
    backgroundImage = event.target.files[0] || null;
    $("bg-hint").textContent = backgroundImage ? "Over " + backgroundImage.name + ", scaled to cover." : HINTS.image;
    if (items.length && backgroundImage) processAll(items);
    return;
  }
  if (event.target.id === "colour") document.querySelector("input[value=colour]").checked = true;
  $("bg-hint").textContent = HINTS[bgChoice()];
  if (bgChoice() === "image" && !backgroundImage) { $("bg-image").click(); return; }
  if (items.length) processAll(items);
});
$("colour").addEventListener("click", () => { document.querySelector("input[value=colour]").checked = true; });

// -- names, as the server labels them -----------------------------------------------------------
function safeLabel(name) {
  const base = name.split(/[\\/]/).pop();
  return base.replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^\.+/, "").slice(0, 120) || "photo";
}
function stem(label) { const i = label.lastIndexOf("."); return i > 0 ? label.slice(0, i) : label; }
// Two photos with one name (from two folders) get distinct labels, as the server would
// name them (`<stem>-2.jpg`): each card gets its own cut-out and download name.
function uniqueLabel(label) {
  const taken = new Set(items.map((item) => item.label));
  if (!taken.has(label)) return label;
  const dot = label.lastIndexOf("."), ext = dot > 0 ? label.slice(dot) : "";
  let n = 2;
  while (taken.has(stem(label) + "-" + n + ext)) n++;
  return stem(label) + "-" + n + ext;
}
function carOf(label) { const m = /^(.+)_(\d{2})$/.exec(stem(label)); return m ? m[1] : null; }

// -- cards --------------------------------------------------------------------------------------
function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function addCard(item) {
  const before = el("img", { alt: "Photo " + item.file.name, class: "before" });
  before.src = item.photoUrl;
  before.addEventListener("error", () => {
    before.replaceWith(el("div", { class: "err", text: "The browser cannot show this file." }));
  }, { once: true });
  const after = el("div", { class: "frame after-frame" }, [el("span", { class: "wait", text: "Waiting…" })]);
  const pill = el("span", { class: "pill", text: "Queued" });
  const info = el("span", { class: "info", text: (item.file.size / 1024).toFixed(0) + " KB" });
  const download = el("a", { class: "button primary", "aria-disabled": "true", title: "Download the cut-out" });
  download.innerHTML = '<svg width="15" height="15" viewBox="0 0 24 24" fill="none" stroke="currentColor" ' +
    'stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">' +
    '<path d="M12 4v11M7 10l5 5 5-5M5 20h14"/></svg>PNG';
  const note = el("p", { class: "note", role: "status", hidden: "" });
  const card = el("article", { class: "card", "data-state": "queued" }, [
    el("div", { class: "card-head" }, [
      el("div", { class: "title" }, [el("span", { class: "name", text: item.file.name, title: item.file.name }), info]),
      el("div", { class: "actions" }, [pill, download]),
    ]),
    note,
    el("div", { class: "pair" }, [
      el("div", { class: "pane" }, [el("span", { class: "label", text: "Before" }),
                                    el("div", { class: "frame" }, [before])]),
      el("div", { class: "pane" }, [el("span", { class: "label", text: "After" }), after]),
    ]),
  ]);
  before.addEventListener("load", () => {
    card.style.setProperty("--ratio", before.naturalWidth + " / " + before.naturalHeight);
    info.textContent = before.naturalWidth + "×" + before.naturalHeight + " · " + info.textContent;
  }, { once: true });
  item.card = card; item.parts = { pill, after, download, info, note };
  $("results").append(card);
}

// A card is queued, working (its request sent), done or error; the toolbar counts them.
function setState(item, state, text) {
  item.card.dataset.state = state;
  item.parts.pill.className = "pill " + state;
  item.parts.pill.textContent = text;
  updateCount();
}

// How the server cut a photo out, when the user should know (e.g. taken out of its set).
function showWarning(item, warning) {
  const renamed = item.label !== safeLabel(item.file.name)
    ? "Another photo here has this name: this one is " + item.label + "." : "";
  const text = [renamed, warning].filter(Boolean).join(" ");
  item.parts.note.textContent = text ? "Note: " + text : "";
  item.parts.note.hidden = !text;
}

function showResult(item, blob, note, background, warning) {
  showWarning(item, warning);
  if (item.resultUrl) URL.revokeObjectURL(item.resultUrl);
  item.resultUrl = URL.createObjectURL(blob);
  const img = el("img", { class: "result", alt: "Cut-out of " + item.file.name });
  img.src = item.resultUrl;
  const frame = item.parts.after;
  frame.className = "frame after-frame" + (background === "transparent" ? " checker" : "");
  frame.replaceChildren(img);
  const link = item.parts.download;
  link.href = item.resultUrl;
  link.download = stem(item.label) + (background === "mask" ? "_mask" : "") + ".png";
  item.result = { blob, name: link.download };
  link.setAttribute("aria-disabled", "false");
  setState(item, "done", "Done · " + note);
  updateCount();
}

function showError(item, message, warning) {
  showWarning(item, warning);
  item.result = null;
  item.parts.after.className = "frame after-frame";
  item.parts.after.replaceChildren(el("div", { class: "err", text: message }));
  item.parts.download.setAttribute("aria-disabled", "true");
  item.parts.download.removeAttribute("href");
  setState(item, "error", "Failed");
}

function updateCount() {
  const states = { done: 0, error: 0, working: 0, queued: 0 };
  for (const item of items) if (item.card) states[item.card.dataset.state]++;
  const parts = [states.done + " of " + items.length + " done"];
  if (states.error) parts.push(states.error + " failed");
  if (states.working) parts.push(states.working + " cutting out");
  if (states.queued) parts.push(states.queued + " queued");
  $("progress").textContent = items.length ? parts.join(" · ") : "";
  $("empty").hidden = items.length > 0;
  $("clear").hidden = items.length === 0;
  $("download-all").hidden = !items.some((item) => item.result);
}

// -- requests -----------------------------------------------------------------------------------
async function errorText(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  } catch (_) { /* not JSON */ }
  return "The server answered " + response.status + " " + response.statusText;
}

// The server's API key, when it has one (asked for in the header, kept for this tab only).
function keyHeader() { const key = $("api-key").value; return key ? { "X-Api-Key": key } : {}; }
$("api-key").value = sessionStorage.getItem("carmask-api-key") || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("carmask-api-key", $("api-key").value);
  const failed = items.filter((item) => !item.rejected && item.card.dataset.state === "error");
  if (failed.length) processAll(failed);
});

// A job is stale once its photos were queued again (new background, more views of the car).
const fresh = (list, token) => list.some((item) => item.token === token);

async function cutOne(item, background, token) {
  if (!fresh([item], token)) return;
  setState(item, "working", "Cutting out…");
  const form = new FormData();
  form.append("file", item.file, item.label);
  addBackground(form, background);
  const started = performance.now();
  const response = await fetch("/api/cutout", { method: "POST", body: form, headers: keyHeader() });
  if (item.token !== token) return;
  if (!response.ok) return showError(item, await errorText(response));
  const blob = await response.blob();
  const warning = response.headers.get("X-Carmask-Warning");
  if (item.token === token) showResult(item, blob, ((performance.now() - started) / 1000).toFixed(1) + " s", background, warning);
}

async function cutSet(group, background, token) {
  if (!fresh(group, token)) return;
  group.filter((item) => item.token === token).forEach((item) => setState(item, "working", "Cutting out…"));
  const form = new FormData();
  for (const item of group) form.append("files", item.file, item.label);
  addBackground(form, background);
  const started = performance.now();
  const response = await fetch("/api/cutout-set", { method: "POST", body: form, headers: keyHeader() });
  const mine = () => group.filter((item) => item.token === token);
  if (!response.ok) {
    const message = await errorText(response);
    return mine().forEach((item) => showError(item, message));
  }
  const entries = await readZip(await response.arrayBuffer());
  // manifest.json: the skipped photos and the notes as values, each with its sentence (text)
  const manifest = entries.has("manifest.json")
    ? JSON.parse(new TextDecoder().decode(entries.get("manifest.json"))) : { skipped: [], notes: [] };
  const note = "set of " + group.length + " · " + ((performance.now() - started) / 1000).toFixed(1) + " s";
  for (const item of mine()) {
    const png = entries.get(stem(item.label) + (background === "mask" ? "_mask" : "") + ".png");
    const warning = manifest.notes.filter((n) => n.photos.includes(item.label)).map((n) => n.text).join(" ");
    if (png) { showResult(item, new Blob([png], { type: "image/png" }), note, background, warning); continue; }
    const skipped = manifest.skipped.find((e) => e.photo === item.label);
    showError(item, skipped ? skipped.text : "Skipped by the server.", warning);
  }
}

// Two requests at a time: the server works on a few photos at once anyway.
const queue = [];
let running = 0, tokens = 0;
function enqueue(job, list, token) {
  queue.push(() => job().catch((error) => {
    console.error(error);
    list.filter((item) => item.token === token).forEach((item) => showError(item, "Could not reach the server."));
  }));
  pump();
}
function pump() {
  while (running < 2 && queue.length) {
    running++;
    queue.shift()().finally(() => { running--; pump(); });
  }
}

// Sets of >= 3 views of one car go together; the rest one by one.
function processAll(list) {
  const token = ++tokens, background = bgParam();
  const cars = new Map(), grouped = new Set();
  list = list.filter((item) => !item.rejected);
  for (const item of list) {
    item.token = token;
    setState(item, "queued", "Queued");
    const car = carOf(item.label);
    if (car) { if (!cars.has(car)) cars.set(car, []); cars.get(car).push(item); }
  }
  for (const group of cars.values()) {
    if (group.length < 3) continue;
    group.forEach((item) => grouped.add(item));
    enqueue(() => cutSet(group, background, token), group, token);
  }
  for (const item of list) {
    if (!grouped.has(item)) enqueue(() => cutOne(item, background, token), [item], token);
  }
}

// The server's upload limit (from /version): larger files are refused here, before any upload.
let maxUpload = 0;
const mib = (bytes) => (bytes / 1048576).toFixed(1);

function addFiles(fileList) {
  const added = [];
  for (const file of fileList) {
    const item = { id: nextId++, file, label: uniqueLabel(safeLabel(file.name)), photoUrl: URL.createObjectURL(file) };
    items.push(item); addCard(item);
    if (!(/^image\/(jpeg|png|webp|bmp|x-ms-bmp|tiff)$/.test(file.type) || /\.(jpe?g|png|webp|bmp|tiff?)$/i.test(file.name))) {
      showError(item, "Not a photo (" + (file.type || "unknown type") + "): only JPEG, PNG, WebP, BMP or TIFF files are cut out.");
      item.rejected = true;
      continue;
    }
    if (maxUpload && file.size > maxUpload) {
      showError(item, "Too large to send: " + mib(file.size) + " MiB, over this server's upload limit of " + mib(maxUpload) + " MiB.");
      item.rejected = true;
      continue;
    }
    added.push(item);
  }
  updateCount();
  // A set may grow over several drops: redo the whole car when more of its views arrive.
  const cars = new Set(added.map((item) => carOf(item.label)).filter(Boolean));
  const todo = items.filter((item) => !item.rejected && (added.includes(item) || cars.has(carOf(item.label))));
  if (todo.length) processAll(todo);
}

// -- a small zip reader (the server stores PNGs uncompressed) --------------------------------------
async function readZip(buffer) {
  const view = new DataView(buffer), bytes = new Uint8Array(buffer), out = new Map();
  let end = -1;
  for (let i = buffer.byteLength - 22; i >= Math.max(0, buffer.byteLength - 65557); i--) {
    if (view.getUint32(i, true) === 0x06054b50) { end = i; break; }
  }
  if (end < 0) throw new Error("not a zip");
  const count = view.getUint16(end + 10, true);
  let at = view.getUint32(end + 16, true);
  for (let n = 0; n < count; n++) {
    if (view.getUint32(at, true) !== 0x02014b50) throw new Error("bad zip directory");
    const method = view.getUint16(at + 10, true), size = view.getUint32(at + 20, true);
    const nameLength = view.getUint16(at + 28, true), extra = view.getUint16(at + 30, true);
    const comment = view.getUint16(at + 32, true), local = view.getUint32(at + 42, true);
    const name = new TextDecoder().decode(bytes.subarray(at + 46, at + 46 + nameLength));
    const start = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    let data = bytes.slice(start, start + size);
    if (method === 8) {
      const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate-raw"));
      data = new Uint8Array(await new Response(stream).arrayBuffer());
    } else if (method !== 0) { at += 46 + nameLength + extra + comment; continue; }
    out.set(name, data);
    at += 46 + nameLength + extra + comment;
  }
  return out;
}

// -- input --------------------------------------------------------------------------------------
const drop = $("drop");
$("file-input").addEventListener("change", (event) => { addFiles(event.target.files); event.target.value = ""; });
// A drop anywhere, the drop zone included, is taken once, here. (The zone's listener and this one
// both adding gave every photo twice; the default, cancelled here, would give them to the input too.)
for (const type of ["dragenter", "dragover"]) drop.addEventListener(type, () => drop.classList.add("over"));
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  addFiles(event.dataTransfer.files);
});

// -- a small zip writer (stored, CRC-32), for "Download all" ---------------------------------------
const CRC = new Uint32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
async function makeZip(files) {
  const parts = [], central = [];
  let offset = 0;
  for (const { name, blob } of files) {
    const data = new Uint8Array(await blob.arrayBuffer()), nameBytes = new TextEncoder().encode(name);
    const crc = crc32(data), head = new DataView(new ArrayBuffer(30)), dir = new DataView(new ArrayBuffer(46));
    head.setUint32(0, 0x04034b50, true); head.setUint16(4, 20, true); head.setUint32(14, crc, true);
    head.setUint32(18, data.length, true); head.setUint32(22, data.length, true); head.setUint16(26, nameBytes.length, true);
    dir.setUint32(0, 0x02014b50, true); dir.setUint16(4, 20, true); dir.setUint16(6, 20, true); dir.setUint32(16, crc, true);
    dir.setUint32(20, data.length, true); dir.setUint32(24, data.length, true); dir.setUint16(28, nameBytes.length, true);
    dir.setUint32(42, offset, true);
    parts.push(head, nameBytes, data); central.push(dir, nameBytes);
    offset += 30 + nameBytes.length + data.length;
  }
  const size = central.reduce((n, p) => n + p.byteLength, 0), end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true); end.setUint16(8, files.length, true); end.setUint16(10, files.length, true);
  end.setUint32(12, size, true); end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}
$("download-all").addEventListener("click", async () => {
  const done = items.filter((item) => item.result).map((item) => item.result);
  const link = el("a", { download: "cutouts.zip" });
  link.href = URL.createObjectURL(await makeZip(done));
  link.id = "download-all-link";
  document.body.append(link);
  link.click();
  setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 60000);
});

$("clear").addEventListener("click", () => {
  queue.length = 0;
  for (const item of items) {
    item.token = -1;
    URL.revokeObjectURL(item.photoUrl);
    if (item.resultUrl) URL.revokeObjectURL(item.resultUrl);
  }
  items.length = 0;
  $("results").replaceChildren();
  updateCount();
});

fetch("/version").then((r) => r.json()).then((v) => {
  const models = v.models && v.models.length ? v.models.join(", ") : "no shipped models";
  $("meta").textContent = "v" + v.version + " · " + models + (v.device ? " · " + v.device : "");
  $("key-box").hidden = !v.api_key;
  maxUpload = v.max_upload_bytes || 0;
}).catch(() => {});
updateCount();
