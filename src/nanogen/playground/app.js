// The playground: wires the key, the two forms and the results to the public API.

import { Api, ApiError, describeError, poll } from "./api.js";
import { Gallery, isTerminal, Viewer } from "./gallery.js";
import { History } from "./history.js";
import { ImagePicker } from "./pickers.js";
import { fillSelect, ShotList } from "./shots.js";

const KEY_STORE = "nanogen.apiKey";
const $ = (id) => document.getElementById(id);
const state = { key: localStorage.getItem(KEY_STORE) || "", balance: null, catalogue: null };
const api = new Api(new URL("..", location.href), () => state.key);
const following = new Set();
const recent = new History(api, document.getElementById("history"), document.getElementById("history-note"));
const plural = (n, word) => `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;

function announce(text) {
  $("live").textContent = text;
}

function alertIn(form, message) {
  const box = form.querySelector(".alert");
  box.textContent = message || "";
  box.hidden = !message;
}

function busy(form, on, label) {
  const button = form.querySelector("button.primary");
  button.disabled = on;
  form.setAttribute("aria-busy", String(on));
  if (on) {
    button.dataset.label = button.textContent;
    button.textContent = label;
  } else if (button.dataset.label) {
    button.textContent = button.dataset.label;
  }
}

// -- the key and the account -----------------------------------------------------------------------
function showAccount(account) {
  const line = $("account");
  line.replaceChildren();
  if (!account) {
    line.textContent = state.key ? "Checking the key…" : "No key yet.";
    return;
  }
  const strong = document.createElement("strong");
  strong.textContent = plural(account.credits, "credit");
  line.append(`Account ${account.name}: `, strong);
}

function keyError(message) {
  $("key-error").textContent = message || "";
  $("key-error").hidden = !message;
}

async function refreshAccount() {
  if (!state.key) return showAccount(null);
  try {
    const account = await api.account();
    state.balance = account.credits;
    showAccount(account);
    recent.refresh(); // the balance changed: so did the list
    keyError("");
    return account;
  } catch (err) {
    state.balance = null;
    $("account").textContent = err.status === 401 ? "Key not accepted." : "Balance unavailable.";
    keyError(describeError(err));
    return null;
  }
}

async function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) {
    keyError("Paste an API key first (it starts with ng_).");
    $("api-key").focus();
    return;
  }
  state.key = key;
  showAccount(null);
  const account = await refreshAccount();
  if (account) {
    localStorage.setItem(KEY_STORE, key); // only a key the server accepted is remembered
    clearFormAlerts(); // "enter a key first", a refused key, another account's credits: all stale now
    announce(`Key accepted: account ${account.name}, ${plural(account.credits, "credit")}.`);
    resumeAll();
  } else {
    localStorage.removeItem(KEY_STORE);
    $("api-key").focus();
  }
}

function forgetKey() {
  localStorage.removeItem(KEY_STORE);
  state.key = "";
  state.balance = null;
  $("api-key").value = "";
  keyError("");
  showAccount(null);
  recent.clear();
  announce("The key was removed from this browser.");
  $("api-key").focus();
}

function clearFormAlerts() {
  if (!state.catalogue) return; // the forms' alert then says the options could not be loaded
  for (const form of [$("image-form"), $("video-form")]) alertIn(form, "");
}

function needKey(form) {
  if (state.key) return true;
  alertIn(form, "Enter your API key at the top of the page first.");
  $("api-key").focus();
  return false;
}

// After a failed request: say why, and refresh the balance when credits were the problem.
async function failed(form, err) {
  if (err instanceof ApiError && err.status === 402) await refreshAccount();
  alertIn(form, describeError(err, state.balance));
  announce("The request was not accepted.");
}

// -- images ----------------------------------------------------------------------------------------
function setUpImages(catalogue, gallery) {
  const form = $("image-form");
  const mode = $("image-mode");
  const inputs = $("image-inputs");
  fillSelect($("image-aspect"), catalogue.aspectRatios.map((value) => ({ value })));
  fillSelect($("image-quality"), catalogue.qualities.map((q) => ({
    value: q.value,
    label: `${q.value} (${plural(q.credits, "credit")})${q.available ? "" : ", not on this server"}`,
    disabled: !q.available,
  })));
  $("image-prompt").maxLength = catalogue.maxPromptChars;
  const cost = () => {
    const quality = catalogue.qualities.find((q) => q.value === $("image-quality").value);
    $("image-cost").textContent = quality ? `This image costs ${plural(quality.credits, "credit")}.` : "";
  };
  const picker = new ImagePicker(inputs, {
    max: catalogue.maxInputImages,
    hint: `Up to ${catalogue.maxInputImages} images (PNG, JPEG, WebP or GIF). Local files are uploaded when you generate.`,
    describe: () => "the images to edit",
  });
  const applyMode = () => {
    const edit = mode.value === "edit";
    inputs.hidden = !edit;
    inputs.disabled = !edit;
  };
  mode.addEventListener("change", applyMode);
  $("image-quality").addEventListener("change", cost);
  applyMode();
  cost();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alertIn(form, "");
    if (!needKey(form)) return;
    const prompt = $("image-prompt").value.trim();
    if (!prompt) {
      alertIn(form, "Write a prompt first.");
      $("image-prompt").focus();
      return;
    }
    const edit = mode.value === "edit";
    if (edit && picker.items.length === 0) {
      alertIn(form, "Edit mode needs at least one image: add a file or an image URL.");
      picker.files.focus();
      return;
    }
    const options = {
      mode: mode.value,
      aspectRatio: $("image-aspect").value,
      imageQuality: $("image-quality").value,
      googleSearch: $("image-search").checked,
    };
    busy(form, true, "Sending…");
    try {
      const body = { prompt, ...options };
      if (edit) {
        body.inputImageUrls = await picker.urls((file) => api.upload(file), (name) => {
          form.querySelector("button.primary").textContent = `Uploading ${name}…`;
        });
      }
      const answer = await api.generateImage(body);
      const record = gallery.add({
        kind: "image", id: answer.generationId, taskId: answer.taskId, prompt, options,
        credits: answer.creditsUsed, status: answer.status, progress: 0, createdAt: Date.now(),
      });
      announce(`Image requested (${plural(answer.creditsUsed, "credit")}). Status: ${answer.status}.`);
      refreshAccount();
      followImage(record, catalogue, gallery);
    } catch (err) {
      await failed(form, err);
    } finally {
      busy(form, false);
    }
  });
}

function followImage(record, catalogue, gallery) {
  follow(record, gallery, () => poll(() => api.imageStatus(record.id), {
    seconds: catalogue.pollSeconds,
    isDone: (answer) => isTerminal(answer.status),
    onUpdate: (answer) => gallery.update(record, {
      status: answer.status,
      progress: answer.progress,
      url: answer.imageUrl,
      error: answer.error,
      refunded: answer.status === "failed" ? record.credits : 0,
      notice: "",
    }),
    onTrouble: (err, delay) => gallery.update(record, { notice: `${describeError(err)} Retrying in ${delay} s.` }),
  }), (answer) => answer.status === "completed"
    ? "Image ready."
    : `Image failed: ${answer.error}. Its ${plural(record.credits, "credit")} were refunded.`);
}

// -- videos ----------------------------------------------------------------------------------------
function setUpVideos(catalogue, gallery) {
  const form = $("video-form");
  const resolution = $("video-resolution");
  const byValue = Object.fromEntries(catalogue.resolutions.map((r) => [r.value, r]));
  let shots = null;
  const refresh = () => {
    if (!shots) return;
    const count = shots.shots.length;
    // 1080p and 4k are single-shot only (contract): offer them only for one shot.
    const chosen = resolution.value;
    fillSelect(resolution, catalogue.resolutions.map((r) => ({
      value: r.value,
      label: `${r.value} (${plural(r.credits, "credit")} per shot)` +
        (!r.available ? ", not on this server" : r.singleShotOnly ? ", one shot only" : ""),
      disabled: !r.available || (r.singleShotOnly && count > 1),
    })));
    const keep = [...resolution.options].find((o) => o.value === chosen && !o.disabled);
    if (keep) resolution.value = chosen;
    const per = byValue[resolution.value]?.credits ?? 0;
    $("video-cost").textContent =
      `${plural(count, "shot")} × ${plural(per, "credit")} = ${plural(count * per, "credit")} ` +
      `(${count * catalogue.shotSeconds} s of video).`;
  };
  resolution.addEventListener("change", refresh);
  shots = new ShotList($("shots"), $("add-shot"), catalogue, refresh);
  refresh();

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alertIn(form, "");
    if (!needKey(form)) return;
    const problem = shots.problem();
    if (problem) {
      alertIn(form, problem.message);
      problem.focus.focus();
      return;
    }
    busy(form, true, "Sending…");
    try {
      const list = await shots.request((file) => api.upload(file), (name) => {
        form.querySelector("button.primary").textContent = `Uploading ${name}…`;
      });
      const answer = await api.generateVideo({ shots: list, resolution: resolution.value });
      const prompts = Object.fromEntries(list.map((s) => [s.id, s.prompt]));
      const record = gallery.add({
        kind: "video", id: answer.generationId, resolution: resolution.value,
        credits: answer.creditsUsed, status: answer.status, progress: 0, createdAt: Date.now(),
        shots: answer.shots.map((s) => ({ ...s, prompt: prompts[s.shotId], progress: 0 })),
      });
      announce(`Video requested: ${plural(list.length, "shot")}, ${plural(answer.creditsUsed, "credit")}.`);
      refreshAccount();
      followVideo(record, catalogue, gallery);
    } catch (err) {
      await failed(form, err);
    } finally {
      busy(form, false);
    }
  });
}

function followVideo(record, catalogue, gallery) {
  const refs = record.shots.map((s) => ({ shotId: s.shotId, taskId: s.taskId }));
  const perShot = record.credits / record.shots.length;
  follow(record, gallery, () => poll(() => api.videoStatus(refs, record.resolution), {
    seconds: catalogue.pollSeconds,
    isDone: (answer) => isTerminal(answer.status),
    onUpdate: (answer) => {
      const shots = record.shots.map((s, i) => ({ ...s, ...answer.shots[i] }));
      const progress = Math.round(shots.reduce((sum, s) => sum + (s.progress ?? 0), 0) / shots.length);
      const failedShots = shots.filter((s) => s.status === "failed").length;
      const single = shots.length === 1 ? shots[0].videoUrl : undefined;
      gallery.update(record, {
        shots,
        status: answer.status,
        // Shots done but the joined video not ready yet: not quite 100%.
        progress: answer.status === "processing" ? Math.min(progress, 99) : progress,
        url: answer.concatenatedVideoUrl ?? single,
        error: answer.concatenationError ? `Joining the shots failed: ${answer.concatenationError}` : "",
        refunded: failedShots * perShot,
        notice: "",
      });
    },
    onTrouble: (err, delay) => gallery.update(record, { notice: `${describeError(err)} Retrying in ${delay} s.` }),
  }), (answer) => answer.status === "completed"
    ? "Video ready."
    : `Video failed; the failed shots' credits were refunded.`);
}

// -- canceling a running request (nanogen): what had not completed is refunded -----------------------
async function cancelRecord(record, gallery) {
  try {
    const answer = await api.cancel(record.id);
    announce(`Canceled: ${plural(answer.creditsRefunded, "credit")} refunded.`);
    refreshAccount();
  } catch (err) {
    gallery.update(record, { notice: describeError(err) });
  }
}

// -- following running requests --------------------------------------------------------------------
function follow(record, gallery, run, doneMessage) {
  if (following.has(record.id) || isTerminal(record.status) || !state.key) return;
  following.add(record.id);
  run()
    .then((answer) => {
      if (!answer) return;
      announce(doneMessage(answer));
      refreshAccount();
    })
    .catch((err) => gallery.update(record, { notice: describeError(err) }))
    .finally(() => following.delete(record.id));
}

let resumeAll = () => {};

async function main() {
  const viewer = new Viewer($("viewer"));
  const gallery = new Gallery($("gallery"), $("empty"), viewer, (record) => cancelRecord(record, gallery));
  $("key-form").addEventListener("submit", useKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("refresh-history").addEventListener("click", () => (state.key ? recent.refresh() : recent.clear()));
  $("clear-gallery").addEventListener("click", () => {
    gallery.clear();
    announce("The results list was cleared.");
  });
  if (state.key) $("api-key").value = state.key;
  showAccount(null);

  let catalogue;
  try {
    const response = await fetch("catalogue.json", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    catalogue = await response.json();
  } catch (err) {
    for (const form of [$("image-form"), $("video-form")]) {
      alertIn(form, `Cannot load the server's options (${err.message}). Reload the page.`);
    }
    return;
  }
  state.catalogue = catalogue;
  setUpImages(catalogue.image, gallery);
  setUpVideos(catalogue.video, gallery);
  resumeAll = () => {
    for (const record of gallery.records) {
      if (record.kind === "image") followImage(record, catalogue.image, gallery);
      else followVideo(record, catalogue.video, gallery);
    }
  };
  document.body.dataset.ready = "true";
  if (state.key && (await refreshAccount())) resumeAll();
}

main();
