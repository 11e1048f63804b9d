// The account's recent generations (GET /api/generations, newest first): a small list that follows the
// key, refreshed whenever the balance is (after a key is accepted and after each generation ends).

const LIMIT = 10;

function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export class History {
  constructor(api, list, note) {
    this.api = api;
    this.list = list; // an <ol> named "Recent generations"
    this.note = note; // a line for "nothing yet" and for a list that could not be read
    this.seq = 0; // answers that come back out of order are dropped
  }

  clear(message = "Enter a key to see this account's generations.") {
    this.seq += 1;
    this.list.replaceChildren();
    this.note.textContent = message;
    this.note.hidden = false;
  }

  async refresh() {
    const seq = ++this.seq;
    let page;
    try {
      page = await this.api.call("GET", `api/generations?limit=${LIMIT}`);
    } catch (err) {
      if (seq === this.seq) this.clear(`The account's generations could not be read: ${err.message}`);
      return;
    }
    if (seq !== this.seq) return;
    this.list.replaceChildren(...page.data.map((g) => this.item(g)));
    this.note.textContent = page.data.length ? "" : "No generations on this account yet.";
    this.note.hidden = page.data.length > 0;
  }

  item(g) {
    const li = document.createElement("li");
    li.dataset.generationId = g.generationId;
    li.dataset.status = g.status;
    const head = document.createElement("strong");
    head.textContent = `${g.product === "video" ? "Video" : "Image"} · ${g.status}`;
    const prompt = document.createElement("span");
    prompt.className = "prompt";
    prompt.textContent = g.prompt || "";
    const meta = document.createElement("small");
    const deleted = g.filesDeletedAt ? " · files deleted" : "";
    meta.textContent = `${when(g.createdAt)} · ${g.credits.toLocaleString()} credits${deleted}`;
    li.append(head, " ", prompt, document.createElement("br"), meta);
    return li;
  }
}
