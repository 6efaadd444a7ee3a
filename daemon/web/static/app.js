// clapd's web page: polls the daemon's JSON (live scores every hop, events every few seconds), searches the
// history and sends the per-event buttons' requests. Plain DOM, no library; every value is set as text.
"use strict";

const EVENTS_EVERY_MS = 1000;
const MIN_LIVE_MS = 250;
let liveEveryMs = 1000;
const shownEvents = new Map(); // event_id -> its row
let knownStreams = "";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function shortTime(iso) {
  return iso ? iso.replace("T", " ").replace(/\+00:00$/, "") : "";
}

// --- live scores ---

function streamCard(stream) {
  const card = el("div", { class: "stream", "data-stream": stream.stream });
  card.append(el("h3", {}, stream.stream, el("span", { class: "muted level" })));
  for (const row of stream.detections) {
    const track = el("div", { class: "track" }, el("div", { class: "fill" }));
    for (const [value, kind] of [[row.threshold_off, "off"], [row.threshold_on, "on"]]) {
      if (value !== null) {
        const mark = el("div", { class: `mark ${kind}`, title: `threshold_${kind} ${value}` });
        mark.style.left = `${value * 100}%`;
        track.append(mark);
      }
    }
    card.append(
      el("div", { class: "detection", "data-detection": row.detection },
        el("span", {}, row.detection), track, el("span", { class: "score" }, "–"), el("span", { class: "state" }, "off")),
    );
  }
  return card;
}

function renderLive(live) {
  const box = document.getElementById("streams");
  const layout = JSON.stringify(live.streams.map((s) => [s.stream, s.detections.map((d) => d.detection)]));
  if (layout !== knownStreams) {
    knownStreams = layout;
    box.replaceChildren(...live.streams.map(streamCard));
    const select = document.getElementById("stream");
    select.replaceChildren(el("option", { value: "" }, "every stream"),
      ...live.streams.map((s) => el("option", { value: s.stream }, s.stream)));
  }
  for (const stream of live.streams) {
    const card = box.querySelector(`.stream[data-stream="${CSS.escape(stream.stream)}"]`);
    const level = stream.level_dbfs === null ? "" : `level ${stream.level_dbfs.toFixed(1)} dBFS`;
    const anomaly = stream.anomaly === null ? "" : ` · anomaly ${stream.anomaly.toFixed(2)}`;
    card.querySelector(".level").textContent = level + anomaly;
    for (const row of stream.detections) {
      const line = card.querySelector(`.detection[data-detection="${CSS.escape(row.detection)}"]`);
      const score = row.score === null ? 0 : Math.min(Math.max(row.score, 0), 1);
      const fill = line.querySelector(".fill");
      fill.style.width = `${score * 100}%`;
      fill.classList.toggle("over", row.threshold_on !== null && score >= row.threshold_on);
      fill.classList.toggle("near", score >= row.threshold_off && !(row.threshold_on !== null && score >= row.threshold_on));
      line.querySelector(".score").textContent = row.score === null ? "–" : row.score.toFixed(2);
      const state = line.querySelector(".state");
      state.textContent = row.on ? "ON" : "off";
      state.classList.toggle("on", row.on);
    }
  }
  document.body.dataset.windows = live.windows;
}

async function pollLive() {
  try {
    const live = await getJson("api/live");
    liveEveryMs = Math.max(MIN_LIVE_MS, live.hop_seconds * 1000);
    renderLive(live);
    document.getElementById("status").textContent = `live · ${live.windows} windows scored`;
  } catch (error) {
    document.getElementById("status").textContent = `not connected: ${error.message}`;
  }
  setTimeout(pollLive, liveEveryMs);
}

// --- events ---

function player(url) {
  return url ? el("audio", { controls: true, preload: "metadata", src: url }) : "";
}

function teachButtons(event) {
  const result = el("span", { class: "result" });
  const ask = async (action, label) => {
    result.className = "result";
    result.textContent = `${label}…`;
    try {
      const response = await fetch("api/control", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ action, detection: event.detection, stream: event.stream, event_id: event.event_id }),
      });
      const body = await response.json();
      result.className = body.ok ? "result ok" : "result error";
      result.textContent = body.ok ? `${label}: done (${body.example})` : `${label}: ${body.errors.join("; ")}`;
    } catch (error) {
      result.className = "result error";
      result.textContent = `${label}: ${error.message}`;
    }
  };
  return [
    el("button", { type: "button", class: "enrol", onclick: () => ask("enrol", "use as an example") }, "use as an example"),
    el("button", { type: "button", class: "false-alarm", onclick: () => ask("false_alarm", "false alarm") }, "mark as a false alarm"),
    result,
  ];
}

function eventRow(event) {
  return el("tr", { "data-event-id": event.event_id },
    el("td", { class: "num" }, shortTime(event.start_utc)),
    el("td", { class: "num end" }, event.end_utc ? shortTime(event.end_utc) : "going on"),
    el("td", {}, event.stream),
    el("td", {}, event.detection),
    el("td", { class: "num" }, event.peak_score.toFixed(2)),
    el("td", { class: "clip" }, player(event.clip_url) || (event.clip_pending ? "writing…" : "")),
    el("td", { class: "teach" }, ...teachButtons(event)));
}

function showTeach(row, event) {
  // The latest event of its stream and detection (its audio is in the ring), or any with a clip file kept.
  row.querySelectorAll(".teach button").forEach((button) => { button.hidden = !event.teachable; });
}

function renderEvents(events) {
  const body = document.querySelector("#events tbody");
  const rows = events.map((event) => {
    let row = shownEvents.get(event.event_id);
    if (!row) {
      row = eventRow(event);
      shownEvents.set(event.event_id, row);
    } else {
      row.querySelector(".end").textContent = event.end_utc ? shortTime(event.end_utc) : "going on";
      const clip = row.querySelector(".clip");
      if (event.clip_url && !clip.querySelector("audio")) clip.replaceChildren(player(event.clip_url));
      else if (!event.clip_url) clip.textContent = event.clip_pending ? "writing…" : "";
    }
    showTeach(row, event);
    return row;
  });
  const ids = new Set(events.map((e) => e.event_id));
  for (const id of [...shownEvents.keys()]) if (!ids.has(id)) shownEvents.delete(id);
  if (rows.some((row, i) => body.children[i] !== row) || body.children.length !== rows.length) body.replaceChildren(...rows);
  document.getElementById("no-events").hidden = events.length > 0;
  document.getElementById("events").hidden = events.length === 0;
}

async function pollEvents() {
  try {
    renderEvents((await getJson("api/events")).events);
  } catch (error) {
    document.getElementById("no-events").textContent = `events: ${error.message}`;
  }
  setTimeout(pollEvents, EVENTS_EVERY_MS);
}

// --- search ---

async function search(submit) {
  submit.preventDefault();
  const form = new FormData(submit.target);
  const params = new URLSearchParams({ q: form.get("q"), top: "20" });
  if (form.get("since")) params.set("since", form.get("since"));
  if (form.get("stream")) params.set("stream", form.get("stream"));
  const status = document.getElementById("search-status");
  const table = document.getElementById("results");
  status.textContent = "searching…";
  try {
    const { matches } = await getJson(`api/search?${params}`);
    table.querySelector("tbody").replaceChildren(...matches.map((m) => el("tr", {},
      el("td", { class: "num" }, shortTime(m.start_utc)),
      el("td", { class: "num" }, shortTime(m.end_utc)),
      el("td", {}, m.stream),
      el("td", { class: "num score" }, m.score.toFixed(3)),
      el("td", {}, player(m.clip_url)))));
    table.hidden = matches.length === 0;
    status.textContent = matches.length ? `${matches.length} time ranges, best first` : "nothing found";
  } catch (error) {
    table.hidden = true;
    status.textContent = error.message;
  }
}

document.getElementById("search-form").addEventListener("submit", search);
pollLive();
pollEvents();
