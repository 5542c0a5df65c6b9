// photolabel's page: a client of the same endpoints as any other, with the
// user's key. Plain modern JavaScript, no build step, no dependencies.
//
// Safety: everything that comes from the user or the server (file names,
// URLs, labels, messages) reaches the page through textContent or
// attributes set by the DOM API, never as HTML. The CSP forbids inline
// script, so a name like `<img onerror=…>` stays text.

const KEY_STORAGE = "photolabel.api-key";
// Photos one page run takes; the server has its own, stricter limits
// (a listing may have at most --listing-max-photos).
const MAX_ITEMS = 200;
// Single calls in flight at once when photos are labelled one by one.
const CONCURRENCY = 2;

const $ = (selector) => document.querySelector(selector);

const ui = {
  key: $("#api-key"),
  keyForm: $("#key-form"),
  credit: $("#credit"),
  drop: $("#drop"),
  choose: $("#choose"),
  files: $("#files"),
  urls: $("#urls"),
  asListing: $("#as-listing"),
  run: $("#run"),
  clear: $("#clear"),
  selection: $("#selection"),
  notice: $("#notice"),
  results: $("#results"),
  listing: $("#listing"),
  overview: $("#listing-overview"),
  checks: $("#checks"),
  inventory: $("#inventory tbody"),
  photos: $("#photos"),
  downloadJson: $("#download-json"),
  downloadCsv: $("#download-csv"),
  template: $("#card-template"),
};

// The photos chosen so far (files), the last run's items and its result.
let chosen = [];
let run = null;

// ---- the key: this tab only ------------------------------------------------

ui.key.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
ui.key.addEventListener("input", () => {
  const key = ui.key.value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
});

function authHeaders() {
  const key = ui.key.value.trim();
  return key ? { "x-api-key": key } : {};
}

// ---- errors in plain words -------------------------------------------------

function seconds(n) {
  return n === 1 ? "1 second" : `${n} seconds`;
}

function megabytes(bytes) {
  return `${(bytes / (1024 * 1024)).toFixed(bytes < 1024 * 1024 ? 2 : 0)} MB`;
}

// What a person should read for a refused call: `status` and the JSON body
// the contract gives it, `retryAfter` in seconds where the server sent one.
function explain(status, body, retryAfter, fromUrl) {
  const detail = typeof body?.detail === "string" ? body.detail : "";
  const wait = retryAfter ? `retry in ${seconds(retryAfter)}` : "retry in a moment";
  switch (status) {
    case 0:
      return "The server could not be reached. Check the connection and that the service is running.";
    case 400:
      return fromUrl
        ? "This URL could not be used: it must be a public http(s) address of a JPEG or PNG photo."
        : "Not an image: this file is not a JPEG or PNG photo that can be read.";
    case 401:
      return "This API key is not valid: it is unknown or has been revoked.";
    case 403:
      return "No API key: enter your key at the top of the page.";
    case 408:
      return "The upload was too slow and was cut off; retry.";
    case 413: {
      const limit = /limit of (\d+) bytes/.exec(detail);
      if (limit) return `Too big: the server takes at most ${megabytes(Number(limit[1]))} per request.`;
      const photos = /at most (\d+) photos/.exec(detail);
      if (photos) return `Too many photos: a listing may have at most ${photos[1]}. Split it or untick “Review as one listing”.`;
      return "Too big for this server.";
    }
    case 422:
      return "The request was incomplete: no photo or URL reached the server.";
    case 429:
      if (detail.startsWith("Quota exceeded")) return "Quota used up: this key has used all of its calls.";
      if (detail.includes("invalid API key")) return `Too many invalid keys from this address; ${wait}.`;
      return `Rate limited: this key has made too many requests; ${wait}.`;
    case 503:
      return `The server is busy labelling other photos (or still loading its model); ${wait}.`;
    default:
      return `The server could not label this photo (HTTP ${status}).`;
  }
}

// ---- HTTP, with upload progress --------------------------------------------

// Sends a request and resolves with {status, body, retryAfter}; never
// rejects (status 0 when the server could not be reached).
function send(method, path, body, { onUpload, json } = {}) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, path);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    if (json) xhr.setRequestHeader("content-type", "application/json");
    xhr.responseType = "text";
    if (onUpload) {
      xhr.upload.addEventListener("progress", (e) => onUpload(e.loaded, e.total));
      xhr.upload.addEventListener("load", () => onUpload(Infinity, Infinity));
    }
    xhr.addEventListener("load", () => {
      let parsed = null;
      try {
        parsed = JSON.parse(xhr.responseText);
      } catch {
        parsed = null;
      }
      const retry = Number.parseInt(xhr.getResponseHeader("retry-after") ?? "", 10);
      resolve({ status: xhr.status, body: parsed, retryAfter: Number.isFinite(retry) ? retry : null });
    });
    xhr.addEventListener("error", () => resolve({ status: 0, body: null, retryAfter: null }));
    xhr.addEventListener("abort", () => resolve({ status: 0, body: null, retryAfter: null }));
    xhr.send(json ? JSON.stringify(json) : body);
  });
}

// ---- usage -------------------------------------------------------------------

function number(n) {
  return Number(n).toLocaleString("en-GB");
}

async function showCredit() {
  const { status, body, retryAfter } = await send("GET", "/credit");
  ui.credit.hidden = false;
  ui.credit.classList.toggle("failed", status !== 200);
  if (status !== 200 || !body) {
    ui.credit.textContent = explain(status, body, retryAfter, false);
    return;
  }
  const parts = [`Key “${body.name}”: ${number(body.calls_used)} calls used`];
  if (body.quota != null) parts.push(`of ${number(body.quota)} (${number(body.calls_remaining)} left)`);
  else parts.push("(no quota)");
  ui.credit.textContent = parts.join(" ");
}

ui.keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  showCredit();
});

// ---- choosing photos -------------------------------------------------------

function urlLines() {
  return ui.urls.value
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line.length > 0);
}

function describeSelection() {
  const files = chosen.length;
  const urls = urlLines().length;
  const parts = [];
  if (files) parts.push(files === 1 ? "1 photo" : `${files} photos`);
  if (urls) parts.push(urls === 1 ? "1 URL" : `${urls} URLs`);
  ui.selection.textContent = parts.length ? `${parts.join(" and ")} chosen.` : "No photos chosen.";
}

function addFiles(list) {
  const images = [...list].filter((f) => /^image\/(jpeg|png)$/.test(f.type) || /\.(jpe?g|png)$/i.test(f.name));
  const skipped = list.length - images.length;
  chosen.push(...images);
  let message = "";
  if (skipped) message = `${skipped === 1 ? "1 file was" : `${skipped} files were`} skipped: only JPEG and PNG photos can be labelled.`;
  if (chosen.length > MAX_ITEMS) {
    chosen = chosen.slice(0, MAX_ITEMS);
    message = `This page labels at most ${MAX_ITEMS} photos at a time; the rest were left out.`;
  }
  notify(message);
  describeSelection();
}

function notify(message) {
  ui.notice.hidden = !message;
  ui.notice.textContent = message;
}

ui.choose.addEventListener("click", () => ui.files.click());
ui.files.addEventListener("change", () => {
  addFiles(ui.files.files);
  ui.files.value = "";
});
ui.urls.addEventListener("input", describeSelection);
for (const type of ["dragenter", "dragover"]) {
  ui.drop.addEventListener(type, (e) => {
    e.preventDefault();
    ui.drop.classList.add("over");
  });
}
for (const type of ["dragleave", "drop"]) {
  ui.drop.addEventListener(type, () => ui.drop.classList.remove("over"));
}
ui.drop.addEventListener("drop", (e) => {
  e.preventDefault();
  if (e.dataTransfer?.files?.length) addFiles(e.dataTransfer.files);
});

ui.clear.addEventListener("click", () => {
  chosen = [];
  ui.urls.value = "";
  notify("");
  describeSelection();
  resetResults();
});

// ---- cards -------------------------------------------------------------------

function resetResults() {
  for (const item of run?.items ?? []) if (item.thumb) URL.revokeObjectURL(item.thumb);
  run = null;
  ui.photos.replaceChildren();
  ui.listing.hidden = true;
  ui.results.hidden = true;
  ui.downloadJson.disabled = true;
  ui.downloadCsv.disabled = true;
}

function newItem(index, source) {
  const isFile = source instanceof File;
  return {
    index,
    name: isFile ? source.name : source,
    file: isFile ? source : null,
    url: isFile ? null : source,
    thumb: isFile ? URL.createObjectURL(source) : null,
    state: "queued",
    output: null,
    quality: null,
    duplicateOf: null,
    error: null,
    card: null,
  };
}

function thumbnail(item) {
  if (item.thumb) {
    const img = document.createElement("img");
    img.src = item.thumb;
    img.alt = "";
    return img;
  }
  // A pasted URL is not loaded by the browser (the CSP allows only this
  // origin): the server fetches it safely instead.
  const mark = document.createElement("span");
  mark.className = "url-mark";
  mark.textContent = "Photo fetched by the server";
  return mark;
}

function buildCard(item) {
  const card = ui.template.content.firstElementChild.cloneNode(true);
  card.dataset.index = String(item.index);
  card.querySelector(".thumb").append(thumbnail(item));
  const name = card.querySelector(".name");
  name.textContent = item.name;
  name.title = item.name;
  item.card = card;
  setState(item, "queued", "Waiting");
  return card;
}

function setState(item, state, text, progress) {
  item.state = state;
  const card = item.card;
  if (!card) return;
  card.dataset.state = state;
  card.querySelector(".status").textContent = text;
  if (progress != null) card.querySelector(".progress-bar").style.width = `${Math.round(progress * 100)}%`;
}

function fail(item, status, body, retryAfter) {
  item.error = { status, message: explain(status, body, retryAfter, item.url != null), body };
  setState(item, "error", "Not labelled");
  const error = item.card.querySelector(".error");
  error.hidden = false;
  error.textContent = item.error.message;
}

// The Altum fields of an `Output`, in reading order: [title, class, confidence].
function labelRows(output) {
  const rows = [["Image", output.Image_Class, output.ConfidencePercent_Image_Class]];
  if (output.Room_Class) rows.push(["Room", output.Room_Class, output.ConfidencePercent_Room_Class]);
  if (output.Room_Subclass) rows.push(["Subclass", output.Room_Subclass, output.ConfidencePercent_Room_Subclass]);
  if (output.Scene_Class1) rows.push(["Scene", output.Scene_Class1, output.ConfidencePercent_Scene_Class1]);
  if (output.Scene_Class2) rows.push(["Second scene", output.Scene_Class2, output.ConfidencePercent_Scene_Class2]);
  return rows;
}

function humanLabel(name) {
  return String(name).replaceAll("_", " ").replaceAll("-", " / ");
}

function showLabels(item) {
  const list = item.card.querySelector(".labels");
  list.replaceChildren();
  for (const [title, value, confidence] of labelRows(item.output)) {
    const dt = document.createElement("dt");
    dt.textContent = title;
    const dd = document.createElement("dd");
    dd.dataset.field = title.toLowerCase().replaceAll(" ", "-");
    const label = document.createElement("span");
    label.className = "value";
    label.textContent = humanLabel(value);
    label.dataset.value = value;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${confidence} %`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    const share = Math.max(0, Math.min(100, Number.parseFloat(confidence) || 0));
    fill.style.width = `${share}%`;
    bar.classList.toggle("low", share < 70);
    bar.append(fill);
    dd.append(label, pct, bar);
    list.append(dt, dd);
  }
  list.hidden = false;
  setState(item, "done", "Labelled");
}

const FLAG_TEXT = {
  small: "small",
  blurry: "blurry",
  dark: "dark",
  overexposed: "overexposed",
};

function showFlags(item) {
  const flags = item.card.querySelector(".flags");
  flags.replaceChildren();
  for (const flag of item.quality?.flags ?? []) {
    const li = document.createElement("li");
    li.dataset.flag = flag;
    li.textContent = FLAG_TEXT[flag] ?? flag;
    li.title = flag === "small" ? `${item.quality.width}×${item.quality.height} px` : "";
    flags.append(li);
  }
  flags.hidden = flags.childElementCount === 0;
}

// ---- labelling one by one ----------------------------------------------------

async function labelOne(item) {
  setState(item, "uploading", item.file ? "Uploading" : "Sending the URL", 0);
  let response;
  if (item.file) {
    const form = new FormData();
    form.append("image", item.file, item.file.name);
    response = await send("POST", "/labelling/img", form, {
      onUpload: (loaded, total) => {
        if (loaded >= total) setState(item, "labelling", "Labelling", 1);
        else setState(item, "uploading", `Uploading ${Math.round((loaded / total) * 100)} %`, loaded / total);
      },
    });
  } else {
    setState(item, "labelling", "The server is fetching and labelling it", 0.5);
    response = await send("POST", "/labelling/url", null, { json: { url: item.url } });
  }
  if (response.status === 200 && response.body?.Output) {
    item.output = response.body.Output;
    showLabels(item);
  } else {
    fail(item, response.status, response.body, response.retryAfter);
  }
}

async function labelEach(items) {
  let next = 0;
  const lanes = Array.from({ length: Math.min(CONCURRENCY, items.length) }, async () => {
    while (next < items.length) await labelOne(items[next++]);
  });
  await Promise.all(lanes);
}

// ---- labelling a listing -----------------------------------------------------

async function labelListing(items) {
  let response;
  if (items[0].file) {
    const form = new FormData();
    // Where each photo ends in the body, to show its own upload progress.
    const ends = [];
    let offset = 0;
    for (const item of items) {
      form.append("image", item.file, item.file.name);
      offset += item.file.size;
      ends.push(offset);
      setState(item, "uploading", "Uploading", 0);
    }
    response = await send("POST", "/labelling/listing", form, {
      onUpload: (loaded, total) => {
        const sent = loaded >= total ? offset : (loaded / total) * offset;
        items.forEach((item, i) => {
          const start = i === 0 ? 0 : ends[i - 1];
          const share = Math.max(0, Math.min(1, (sent - start) / Math.max(1, ends[i] - start)));
          if (share >= 1) setState(item, "labelling", "Uploaded; labelling", 1);
          else setState(item, "uploading", `Uploading ${Math.round(share * 100)} %`, share);
        });
      },
    });
  } else {
    for (const item of items) setState(item, "labelling", "The server is fetching and labelling it", 0.5);
    response = await send("POST", "/labelling/listing", null, { json: { urls: items.map((i) => i.url) } });
  }
  if (response.status !== 200 || !Array.isArray(response.body?.photos)) {
    // Refused as a whole: every photo says why.
    for (const item of items) fail(item, response.status, response.body, response.retryAfter);
    return;
  }
  const report = response.body;
  run.report = report;
  for (const entry of report.photos) {
    const item = items[entry.index];
    if (!item) continue;
    if (entry.error) {
      const { status, ...body } = entry.error;
      fail(item, status, body, null);
    } else {
      item.output = entry.Output;
      item.quality = entry.quality;
      item.duplicateOf = entry.duplicate_of;
      showLabels(item);
      showFlags(item);
    }
  }
  showListing(items, report);
}

function showListing(items, report) {
  const byIndex = (i) => items[i];
  // Kept photos in the suggested order, each with its duplicates under it;
  // photos that failed come last.
  const kept = report.order.filter((i) => byIndex(i) && byIndex(i).duplicateOf == null);
  const failed = items.filter((item) => item.error);
  ui.photos.replaceChildren();
  kept.forEach((i, place) => {
    const item = byIndex(i);
    const card = item.card;
    const position = card.querySelector(".position");
    position.hidden = false;
    position.textContent = String(place + 1);
    position.setAttribute("aria-label", `Position ${place + 1}`);
    const isCover = report.cover === i;
    card.classList.toggle("is-cover", isCover);
    card.querySelector(".badge.cover").hidden = !isCover;
    const copies = report.order.filter((j) => byIndex(j)?.duplicateOf === i).map(byIndex);
    const group = card.querySelector(".duplicates");
    group.hidden = copies.length === 0;
    if (copies.length) {
      group.open = true;
      group.querySelector("summary").textContent =
        copies.length === 1 ? "1 duplicate (same shot)" : `${copies.length} duplicates (same shot)`;
      const list = group.querySelector(".duplicate-list");
      list.replaceChildren(
        ...copies.map((copy) => {
          const li = document.createElement("li");
          li.dataset.index = String(copy.index);
          const name = document.createElement("span");
          name.className = "name";
          name.textContent = copy.name;
          li.append(thumbnail(copy), name);
          return li;
        }),
      );
    }
    ui.photos.append(card);
  });
  for (const item of failed) ui.photos.append(item.card);

  const distinct = kept.length;
  const duplicates = items.filter((item) => item.duplicateOf != null).length;
  const cover = report.cover != null ? byIndex(report.cover)?.name : null;
  const parts = [
    `${items.length} photos`,
    `${distinct} distinct`,
    duplicates ? `${duplicates} duplicate${duplicates === 1 ? "" : "s"}` : "no duplicates",
  ];
  if (failed.length) parts.push(`${failed.length} not labelled`);
  ui.overview.replaceChildren();
  const counts = document.createElement("span");
  counts.textContent = `${parts.join(" · ")}. `;
  const coverText = document.createElement("span");
  coverText.id = "cover-name";
  coverText.textContent = cover ? `Suggested cover: ${cover}` : "No cover: no photo could be labelled.";
  ui.overview.append(counts, coverText);

  ui.checks.replaceChildren();
  if (report.checks.length === 0) {
    const li = document.createElement("li");
    li.className = "passed";
    li.textContent = "Every check passed.";
    ui.checks.append(li);
  }
  for (const check of report.checks) {
    const li = document.createElement("li");
    li.dataset.code = check.code;
    const code = document.createElement("code");
    code.textContent = check.code;
    li.append(code, document.createTextNode(check.message));
    ui.checks.append(li);
  }

  ui.inventory.replaceChildren(
    ...Object.entries(report.inventory).map(([leaf, n]) => {
      const tr = document.createElement("tr");
      const th = document.createElement("td");
      th.textContent = humanLabel(leaf);
      const td = document.createElement("td");
      td.textContent = String(n);
      tr.append(th, td);
      return tr;
    }),
  );
  ui.listing.hidden = false;
}

// ---- a run -------------------------------------------------------------------

ui.run.addEventListener("click", async () => {
  const urls = urlLines();
  if (chosen.length === 0 && urls.length === 0) {
    notify("Choose or drop at least one photo, or paste a photo URL.");
    return;
  }
  const asListing = ui.asListing.checked && chosen.length + urls.length > 1;
  if (asListing && chosen.length && urls.length) {
    notify("A listing is either uploaded photos or URLs, not both: clear one of them, or untick “Review as one listing”.");
    return;
  }
  if (chosen.length + urls.length > MAX_ITEMS) {
    notify(`This page labels at most ${MAX_ITEMS} photos at a time.`);
    return;
  }
  notify("");
  resetResults();
  const items = [...chosen, ...urls].map((source, i) => newItem(i, source));
  // The chosen photos now belong to this run; the next choice starts anew.
  chosen = [];
  ui.urls.value = "";
  describeSelection();
  run = { items, listing: asListing, report: null };
  ui.photos.replaceChildren(...items.map(buildCard));
  ui.results.hidden = false;
  ui.run.disabled = true;
  try {
    if (asListing) await labelListing(items);
    else await labelEach(items);
  } finally {
    ui.run.disabled = false;
    ui.downloadJson.disabled = false;
    ui.downloadCsv.disabled = false;
    if (!ui.credit.hidden) showCredit();
  }
});

// ---- downloads ---------------------------------------------------------------

function download(name, type, text) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

function resultsJson() {
  if (run.report) return run.report;
  return run.items.map((item) =>
    item.output
      ? { name: item.name, Output: item.output }
      : { name: item.name, error: { status: item.error?.status ?? 0, message: item.error?.message ?? "" } },
  );
}

// A spreadsheet runs a cell that starts with = + - @ as a formula: such
// text (a file name, say) is prefixed with ' to stay text.
function csvCell(value) {
  let text = value == null ? "" : String(value);
  if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

const CSV_COLUMNS = [
  "name", "position", "cover", "duplicate_of", "flags",
  "image_class", "image_confidence", "room_class", "room_confidence",
  "room_subclass", "room_subclass_confidence", "scene_class1", "scene_class1_confidence",
  "scene_class2", "scene_class2_confidence", "error",
];

function resultsCsv() {
  const positions = new Map();
  if (run.report) {
    run.report.order
      .filter((i) => run.items[i]?.duplicateOf == null)
      .forEach((i, place) => positions.set(i, place + 1));
  }
  const rows = [CSV_COLUMNS];
  for (const item of run.items) {
    const o = item.output ?? {};
    rows.push([
      item.name,
      positions.get(item.index) ?? "",
      run.report ? String(run.report.cover === item.index) : "",
      item.duplicateOf != null ? run.items[item.duplicateOf]?.name : "",
      (item.quality?.flags ?? []).join(" "),
      o.Image_Class, o.ConfidencePercent_Image_Class,
      o.Room_Class, o.ConfidencePercent_Room_Class,
      o.Room_Subclass, o.ConfidencePercent_Room_Subclass,
      o.Scene_Class1, o.ConfidencePercent_Scene_Class1,
      o.Scene_Class2, o.ConfidencePercent_Scene_Class2,
      item.error?.message ?? "",
    ]);
  }
  return rows.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
}

ui.downloadJson.addEventListener("click", () =>
  download("photolabel-results.json", "application/json", JSON.stringify(resultsJson(), null, 2)),
);
ui.downloadCsv.addEventListener("click", () => download("photolabel-results.csv", "text/csv", resultsCsv()));

describeSelection();
document.documentElement.dataset.ready = "true";
