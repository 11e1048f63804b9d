// An image list for a request: local files (uploaded when the request is sent) and image URLs.

let counter = 0;

// Templates carry data-for / data-part names; give each copy unique ids so every label is bound.
export function bindLabels(root, prefix) {
  for (const label of root.querySelectorAll("label[data-for]")) {
    const name = label.dataset.for;
    const control = root.querySelector(`[data-field="${name}"], [data-part="${name}"]`);
    if (!control) continue;
    control.id = `${prefix}-${name}`;
    label.htmlFor = control.id;
  }
}

export class ImagePicker {
  constructor(fieldset, { max, hint, onChange, describe }) {
    this.items = []; // {name, file?, preview, url?}
    this.max = max;
    this.onChange = onChange;
    this.describe = describe; // "Images to edit": names the remove buttons
    const node = document.getElementById("picker-template").content.firstElementChild.cloneNode(true);
    bindLabels(node, `picker${++counter}`);
    fieldset.append(node);
    this.hint = node.querySelector('[data-part="hint"]');
    this.files = node.querySelector('[data-part="files"]');
    this.url = node.querySelector('[data-part="url"]');
    this.list = node.querySelector('[data-part="list"]');
    this.setLimits(max, hint);

    this.files.addEventListener("change", () => {
      for (const file of this.files.files) this.addFile(file);
      this.files.value = "";
    });
    const addUrl = () => {
      const value = this.url.value.trim();
      if (!value) return;
      if (!this.url.checkValidity() || !/^https?:\/\//i.test(value)) {
        this.url.setCustomValidity("An http(s) URL");
        this.url.reportValidity();
        return;
      }
      this.add({ name: value, preview: value, url: value });
      this.url.value = "";
    };
    node.querySelector('[data-part="add-url"]').addEventListener("click", addUrl);
    this.url.addEventListener("input", () => this.url.setCustomValidity(""));
    this.url.addEventListener("keydown", (e) => {
      if (e.key === "Enter") { e.preventDefault(); addUrl(); }
    });
    // Files dropped anywhere on the fieldset are added too.
    fieldset.addEventListener("dragover", (e) => e.preventDefault());
    fieldset.addEventListener("drop", (e) => {
      e.preventDefault();
      for (const file of e.dataTransfer.files) if (file.type.startsWith("image/")) this.addFile(file);
    });
  }

  setLimits(max, hint) {
    this.max = max;
    this.hint.textContent = hint;
    this.sync();
  }

  addFile(file) {
    this.add({ name: file.name, file, preview: URL.createObjectURL(file) });
  }

  add(item) {
    if (this.items.length >= this.max) return;
    this.items.push(item);
    this.render();
  }

  remove(item) {
    this.items = this.items.filter((i) => i !== item);
    if (item.file) URL.revokeObjectURL(item.preview);
    this.render();
  }

  clear() {
    for (const item of [...this.items]) this.remove(item);
  }

  render() {
    this.list.replaceChildren(...this.items.map((item) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = item.preview;
      img.alt = "";
      const name = document.createElement("span");
      name.textContent = item.file ? item.name : `URL: ${item.name}`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${item.name} from ${this.describe()}`);
      remove.addEventListener("click", () => {
        this.remove(item);
        this.files.focus();
      });
      li.append(img, name, remove);
      return li;
    }));
    this.sync();
    this.onChange?.();
  }

  sync() {
    const full = this.items.length >= this.max;
    this.files.disabled = full;
    this.url.disabled = full;
  }

  // The request's URLs, in order. A local file is uploaded (POST /api/uploads) and its URL reused
  // by later requests until shortly before it expires.
  async urls(upload, onUploading) {
    const urls = [];
    for (const item of this.items) {
      if (item.file && !(item.url && Date.now() < item.expires - 60_000)) {
        onUploading?.(item.name);
        const uploaded = await upload(item.file);
        item.url = uploaded.url;
        item.expires = Date.parse(uploaded.expiresAt) || Infinity;
      }
      urls.push(item.url);
    }
    return urls;
  }
}
