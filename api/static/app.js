// The sdq web page: submit a job, follow its Server-Sent Events, show the images.
// Plain browser JavaScript, no build step. Events are read with fetch() rather than EventSource
// because EventSource cannot send the Authorization header.
"use strict";

const KEY_STORAGE = "sdq.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
const RECONNECT_MS = 2000;

const $ = (selector) => document.querySelector(selector);
const form = $("#job-form");
const keyInput = $("#api-key");
const jobsList = $("#jobs");
const following = new Set();
// Browsers open at most 6 HTTP/1.1 connections per host; each event stream holds one. Leave
// room for the page's own requests: at most MAX_STREAMS at once. A job submitted here always
// gets one, taking it from a listed job if need be (that card stops updating live); listed jobs
// only use free ones.
const MAX_STREAMS = 3;
const streams = new Map(); // job id -> { controller, mine }
const waitingForStream = [];

async function openStream(jobId, mine) {
  if (streams.size >= MAX_STREAMS && mine) {
    const borrowed = [...streams.entries()].find(([, stream]) => !stream.mine);
    if (borrowed) borrowed[1].controller.abort();
  }
  if (streams.size >= MAX_STREAMS) {
    if (!mine) return null;
    await new Promise((resolve) => waitingForStream.push(resolve));
  }
  const stream = { controller: new AbortController(), mine };
  streams.set(jobId, stream);
  return stream;
}

function closeStream(jobId) {
  if (!streams.delete(jobId)) return;
  const next = waitingForStream.shift();
  if (next) next();
}

function authHeaders(extra = {}) {
  const headers = { ...extra };
  const key = keyInput.value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return `${body.error.code}: ${body.error.message}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

function numberField(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function requestBody() {
  const body = {
    prompt: $("#prompt").value,
    width: numberField("#width"),
    height: numberField("#height"),
    num_inference_steps: numberField("#steps"),
    guidance_scale: numberField("#guidance"),
    num_images_per_prompt: numberField("#images"),
    scheduler: $("#scheduler").value,
    output_format: $("#format").value,
  };
  const seed = numberField("#seed");
  if (seed !== undefined) body.seed = seed;
  const negative = $("#negative-prompt").value.trim();
  if (negative) body.negative_prompt = negative;
  return body;
}

async function submitJob(event) {
  event.preventDefault();
  const button = $("#submit");
  const formError = $("#form-error");
  formError.textContent = "";
  button.disabled = true;
  try {
    const response = await fetch("/v1/jobs", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(requestBody()),
    });
    if (!response.ok) {
      if (response.status === 401) $("#key-box").open = true;
      formError.textContent = await errorMessage(response);
      return;
    }
    const job = await response.json();
    const card = cardFor(job, true);
    follow(job.id, card, { mine: true });
  } catch (err) {
    formError.textContent = `could not reach the API: ${err}`;
  } finally {
    button.disabled = false;
  }
}

function cardFor(job, atTop) {
  let card = jobsList.querySelector(`[data-job-id="${job.id}"]`);
  if (!card) {
    card = $("#job-template").content.firstElementChild.cloneNode(true);
    card.dataset.jobId = job.id;
    card.querySelector(".prompt").textContent = job.request.prompt.join(" · ");
    card.querySelector(".cancel").addEventListener("click", () => cancelJob(job.id, card));
    if (atTop) jobsList.prepend(card);
    else jobsList.append(card);
    $("#empty").hidden = true;
  }
  showJob(card, job);
  return card;
}

function showStatus(card, status) {
  card.dataset.status = status;
  card.querySelector(".status").textContent = status;
}

function showProgress(card, step, total) {
  const fraction = total ? step / total : 0;
  card.querySelector("progress").value = fraction;
  card.querySelector(".steps").textContent = total ? `step ${step}/${total}` : "";
}

function showJob(card, job) {
  showStatus(card, job.status);
  showProgress(card, job.progress.step, job.progress.total_steps);
  if (job.status === "queued" && job.queue_position !== null && job.queue_position !== undefined) {
    card.querySelector(".steps").textContent = `${job.queue_position} ahead`;
  }
  card.querySelector(".error").textContent = job.error ? job.error.message : "";
  if (job.status === "succeeded" && job.result) showImages(card, job);
}

function showImages(card, job) {
  const gallery = card.querySelector(".gallery");
  gallery.replaceChildren();
  job.result.images.forEach((image, n) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = image.url;
    img.width = image.width;
    img.height = image.height;
    img.alt = `${job.request.prompt[image.prompt_index]} (seed ${image.seed})`;
    const caption = document.createElement("figcaption");
    const seed = document.createElement("span");
    seed.className = "seed";
    seed.textContent = `seed ${image.seed}`;
    const badge = document.createElement("span");
    badge.className = image.nsfw_content_detected ? "badge nsfw" : "badge safe";
    badge.textContent = image.nsfw_content_detected ? "nsfw · blacked out" : "safe";
    const download = document.createElement("a");
    download.className = "download";
    download.href = image.url;
    download.download = `${job.id}-${n}.${image.key.split(".").pop()}`;
    download.target = "_blank";
    download.rel = "noopener";
    download.textContent = "download";
    caption.append(seed, badge, download);
    figure.append(img, caption);
    gallery.append(figure);
  });
}

// Server-Sent Events over fetch: yields {id, event, data} for each message.
async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { id: null, event: "message", data: [] };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") message.data.push(text);
        else if (field === "event") message.event = text;
        else if (field === "id") message.id = text;
      }
      if (message.data.length) yield { ...message, data: JSON.parse(message.data.join("\n")) };
    }
  }
}

// Follow one job until its final "job" event, reconnecting with Last-Event-ID after a drop.
async function follow(jobId, card, { mine = false } = {}) {
  if (following.has(jobId)) return;
  following.add(jobId);
  let lastId = null;
  const stream = await openStream(jobId, mine);
  if (!stream) {
    following.delete(jobId);
    return; // no stream free: the card shows the status it was listed with
  }
  try {
    for (;;) {
      try {
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (lastId) headers["Last-Event-ID"] = lastId;
        const response = await fetch(`/v1/jobs/${jobId}/events`, {
          headers,
          signal: stream.controller.signal,
        });
        if (!response.ok) {
          card.querySelector(".error").textContent = await errorMessage(response);
          if (response.status < 500) return;
        } else {
          for await (const message of readEvents(response.body)) {
            if (message.id) lastId = message.id;
            if (message.event === "status") showStatus(card, message.data.status);
            else if (message.event === "progress") {
              showProgress(card, message.data.step, message.data.total_steps);
            } else if (message.event === "job") {
              showJob(card, message.data);
              return;
            }
          }
        }
      } catch (err) {
        if (stream.controller.signal.aborted) return; // its stream went to a newer job
        console.warn(`events of ${jobId}: ${err}`);
      }
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    }
  } finally {
    following.delete(jobId);
    closeStream(jobId);
  }
}

async function cancelJob(jobId, card) {
  const response = await fetch(`/v1/jobs/${jobId}/cancel`, {
    method: "POST",
    headers: authHeaders(),
  });
  if (!response.ok) card.querySelector(".error").textContent = await errorMessage(response);
}

async function loadRecent() {
  jobsList.replaceChildren();
  $("#empty").hidden = false;
  try {
    const response = await fetch("/v1/jobs?limit=12", { headers: authHeaders() });
    if (!response.ok) {
      if (response.status === 401 || response.status === 403) $("#key-box").open = true;
      return;
    }
    const { jobs } = await response.json();
    for (const job of jobs) {
      // A card already there is newer than this listing (submitted meanwhile, or followed).
      if (jobsList.querySelector(`[data-job-id="${job.id}"]`)) continue;
      const card = cardFor(job, false);
      if (!TERMINAL.has(job.status)) follow(job.id, card);
    }
  } catch (err) {
    console.warn(`could not list jobs: ${err}`);
  }
}

keyInput.value = localStorage.getItem(KEY_STORAGE) || "";
keyInput.addEventListener("change", () => {
  localStorage.setItem(KEY_STORAGE, keyInput.value.trim());
  loadRecent();
});
form.addEventListener("submit", submitJob);
loadRecent();
