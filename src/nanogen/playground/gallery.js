// The results: one card per request, newest first, kept in localStorage (ids and URLs, never the key)
// so that a reload keeps the list and resumes polling what is still running.

const STORE = "nanogen.gallery";
const KEEP = 50;

export const isTerminal = (status) => status === "completed" || status === "failed";

// Only http(s) URLs become links and sources (never javascript: or data: from a stored record).
const safeUrl = (url) => (typeof url === "string" && /^https?:\/\//i.test(url) ? url : null);

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((c) => c != null));
  return node;
}

export class Gallery {
  constructor(list, empty, viewer, onCancel = null) {
    this.list = list;
    this.empty = empty;
    this.viewer = viewer;
    this.onCancel = onCancel; // (record) => ...: the card's Cancel button, shown while it runs
    this.cards = new Map(); // record id -> Card
    let saved = [];
    try {
      saved = JSON.parse(localStorage.getItem(STORE) || "[]");
    } catch {
      // a damaged entry: start a new list
    }
    this.records = Array.isArray(saved) ? saved : [];
    for (const record of [...this.records].reverse()) this.show(record);
    this.sync();
  }

  add(record) {
    this.records.unshift(record);
    this.records.length = Math.min(this.records.length, KEEP);
    this.show(record);
    this.save();
    return record;
  }

  update(record, changes) {
    Object.assign(record, changes);
    this.cards.get(record.id)?.render(record);
    this.save();
  }

  clear() {
    this.records = [];
    this.cards.clear();
    this.list.replaceChildren();
    this.save();
  }

  show(record) {
    const card = new Card(record, this.viewer, this.onCancel);
    this.cards.set(record.id, card);
    this.list.prepend(card.node);
    while (this.list.children.length > KEEP) this.list.lastElementChild.remove();
  }

  save() {
    localStorage.setItem(STORE, JSON.stringify(this.records));
    this.sync();
  }

  sync() {
    this.empty.hidden = this.records.length > 0;
  }
}

function statusText(record) {
  if (record.status === "completed") return "Done";
  if (record.status === "failed") return "Failed";
  const word = record.status === "pending" ? "Queued" : "Generating";
  return `${word}, ${record.progress ?? 0}%`;
}

function costText(record) {
  const refunded = record.refunded ?? 0;
  const total = `${record.credits} credit${record.credits === 1 ? "" : "s"}`;
  if (!refunded) return `Cost: ${total}`;
  return refunded === record.credits ? `Cost: ${total}, refunded` : `Cost: ${total}, ${refunded} refunded`;
}

class Card {
  constructor(record, viewer, onCancel) {
    this.viewer = viewer;
    this.cancel = el("button", { type: "button", className: "cancel", textContent: "Cancel" });
    this.cancel.addEventListener("click", () => onCancel?.(this.record));
    this.media = el("div", { className: "media" });
    this.title = el("h3");
    this.prompt = el("p", { className: "prompt" });
    this.progress = el("progress", { max: 100 });
    this.state = el("span", { className: "state" });
    this.cost = el("p", { className: "cost" });
    this.shots = el("ol", { className: "shot-states" });
    this.error = el("p", { className: "error" });
    this.links = el("p", { className: "links" });
    this.node = el("li", { className: "card" }, this.media,
      el("div", { className: "meta" }, this.title, this.prompt,
        el("div", { className: "progress" }, this.progress, this.state),
        this.cost, this.shots, this.error, this.links, this.cancel));
    this.mediaUrl = null;
    this.render(record);
  }

  render(record) {
    const video = record.kind === "video";
    this.record = record;
    this.cancel.hidden = isTerminal(record.status) || !record.id;
    this.node.dataset.status = record.status;
    this.title.textContent = video
      ? `Video · ${record.shots.length} shot${record.shots.length === 1 ? "" : "s"} · ${record.resolution}`
      : `Image · ${record.options.aspectRatio} · ${record.options.imageQuality}` +
        (record.options.mode === "edit" ? " · edit" : "");
    this.prompt.textContent = video ? record.shots.map((s) => s.prompt).join(" → ") : record.prompt;
    this.progress.value = record.progress ?? 0;
    this.progress.hidden = isTerminal(record.status);
    this.progress.setAttribute("aria-label", `Progress of ${this.title.textContent}`);
    this.cancel.setAttribute("aria-label", `Cancel ${this.title.textContent}`);
    this.state.textContent = statusText(record);
    this.cost.textContent = costText(record);
    this.error.textContent = [record.error, record.notice].filter(Boolean).join(" ");
    this.error.hidden = !this.error.textContent;
    this.shots.hidden = !video;
    if (video) {
      this.shots.replaceChildren(...record.shots.map((shot, i) => {
        const parts = [`Shot ${i + 1}: ${shot.status}`];
        if (shot.status === "processing") parts.push(`${shot.progress ?? 0}%`);
        if (shot.generationTime != null) parts.push(`in ${shot.generationTime} s`);
        if (shot.error) parts.push(`(${shot.error})`);
        const item = el("li", { textContent: parts.join(" ") + " " });
        if (safeUrl(shot.videoUrl) && record.shots.length > 1) {
          const link = el("a", { href: safeUrl(shot.videoUrl), textContent: "video", target: "_blank", rel: "noopener" });
          link.setAttribute("aria-label", `Video of shot ${i + 1}`);
          item.append(link);
        }
        return item;
      }));
    }
    if (record.url !== this.mediaUrl) this.showMedia(record);
  }

  showMedia(record) {
    this.mediaUrl = record.url;
    const url = safeUrl(record.url);
    if (!url) {
      this.media.replaceChildren(el("div", { className: "placeholder", textContent: record.kind === "video" ? "🎬" : "🖼" }));
      this.links.replaceChildren();
      return;
    }
    const label = record.kind === "video" ? `Video: ${this.prompt.textContent}` : this.prompt.textContent;
    if (record.kind === "video") {
      const player = el("video", { src: url, controls: true, preload: "metadata", playsInline: true });
      player.setAttribute("aria-label", label);
      this.media.replaceChildren(player);
    } else {
      const img = el("img", { src: url, alt: label, loading: "lazy", decoding: "async" });
      const open = el("button", { type: "button", className: "thumb" }, img);
      open.setAttribute("aria-label", `View image: ${label}`);
      open.addEventListener("click", () => this.viewer.open(url, label));
      this.media.replaceChildren(open);
    }
    this.links.replaceChildren(
      el("a", { href: url, download: "", textContent: "Download" }), " ",
      el("a", { href: url, target: "_blank", rel: "noopener", textContent: "Open in a new tab" }));
  }
}

// The image viewer: a modal <dialog> (Escape closes it, focus returns to the thumbnail).
export class Viewer {
  constructor(dialog) {
    this.dialog = dialog;
    this.image = dialog.querySelector("#viewer-image");
    this.caption = dialog.querySelector("#viewer-caption");
    this.openLink = dialog.querySelector("#viewer-open");
    this.download = dialog.querySelector("#viewer-download");
    dialog.querySelector("#viewer-close").addEventListener("click", () => dialog.close());
    // A click on the backdrop (outside the figure and buttons) closes it too.
    dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });
  }

  open(url, caption) {
    this.image.src = url;
    this.image.alt = caption;
    this.caption.textContent = caption;
    this.openLink.href = url;
    this.download.href = url;
    this.dialog.showModal();
  }
}
