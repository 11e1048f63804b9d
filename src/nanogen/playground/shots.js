// The multi-shot builder: an ordered list of shots, each with its prompt, type, aspect ratio and images.

import { bindLabels, ImagePicker } from "./pickers.js";

export const TYPE_LABELS = {
  TEXT_2_VIDEO: "Text to video",
  FIRST_AND_LAST_FRAMES_2_VIDEO: "First and last frames",
  REFERENCE_2_VIDEO: "Reference images",
};

const HINTS = {
  FIRST_AND_LAST_FRAMES_2_VIDEO: "1 or 2 images: the first frame, then (optionally) the last frame.",
  REFERENCE_2_VIDEO: "1 to 3 reference images for the look of the shot.",
};

let counter = 0;

export function fillSelect(select, options) {
  select.replaceChildren(...options.map(({ value, label, disabled }) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label ?? value;
    option.disabled = Boolean(disabled);
    return option;
  }));
  const firstUsable = options.findIndex((o) => !o.disabled);
  if (firstUsable >= 0) select.selectedIndex = firstUsable;
}

class Shot {
  constructor(owner, catalogue) {
    this.node = document.getElementById("shot-template").content.firstElementChild.cloneNode(true);
    bindLabels(this.node, `shot${++counter}`);
    this.legend = this.node.querySelector("legend");
    this.prompt = this.node.querySelector('[data-field="prompt"]');
    this.prompt.maxLength = catalogue.maxPromptChars;
    this.type = this.node.querySelector('[data-field="type"]');
    this.aspect = this.node.querySelector('[data-field="aspect"]');
    this.images = this.node.querySelector('[data-field="images"]');
    this.types = Object.fromEntries(catalogue.generationTypes.map((t) => [t.value, t]));
    fillSelect(this.type, catalogue.generationTypes.map((t) => ({
      value: t.value,
      label: (TYPE_LABELS[t.value] ?? t.value) + (t.available ? "" : " (not on this server)"),
      disabled: !t.available,
    })));
    fillSelect(this.aspect, catalogue.aspectRatios.map((value) => ({ value })));
    this.picker = new ImagePicker(this.images, {
      max: 0,
      hint: "",
      onChange: owner.onChange,
      describe: () => this.legend.textContent,
    });
    this.type.addEventListener("change", () => this.applyType());
    this.applyType();
    for (const button of this.node.querySelectorAll("[data-action]")) {
      button.addEventListener("click", () => owner.act(this, button.dataset.action));
    }
  }

  applyType() {
    const { value, maxImages } = this.types[this.type.value];
    const takesImages = maxImages > 0;
    this.images.hidden = !takesImages;
    this.images.disabled = !takesImages;
    if (!takesImages) this.picker.clear();
    while (this.picker.items.length > maxImages) this.picker.remove(this.picker.items.at(-1));
    this.picker.setLimits(maxImages, HINTS[value] ?? "");
  }

  // The first problem a person can fix before sending, or null.
  problem() {
    if (!this.prompt.value.trim()) return { message: `${this.legend.textContent}: write a prompt.`, focus: this.prompt };
    const { minImages, maxImages } = this.types[this.type.value];
    const count = this.picker.items.length;
    if (count < minImages || count > maxImages) {
      return {
        message: `${this.legend.textContent}: ${TYPE_LABELS[this.type.value]} takes ${minImages}` +
          `${maxImages > minImages ? `–${maxImages}` : ""} image${maxImages > 1 ? "s" : ""}.`,
        focus: this.picker.files,
      };
    }
    return null;
  }
}

export class ShotList {
  constructor(list, addButton, catalogue, onChange) {
    this.list = list;
    this.addButton = addButton;
    this.catalogue = catalogue;
    this.onChange = onChange;
    this.shots = [];
    addButton.addEventListener("click", () => this.add().prompt.focus());
    this.add();
  }

  add() {
    const shot = new Shot(this, this.catalogue);
    this.shots.push(shot);
    this.list.append(shot.node);
    this.renumber();
    return shot;
  }

  act(shot, action) {
    const index = this.shots.indexOf(shot);
    if (action === "remove") {
      this.shots.splice(index, 1);
      shot.picker.clear();
      shot.node.remove();
      this.renumber();
      (this.shots[index] ?? this.shots[index - 1]).prompt.focus();
      return;
    }
    const to = index + (action === "up" ? -1 : 1);
    if (to < 0 || to >= this.shots.length) return;
    [this.shots[index], this.shots[to]] = [this.shots[to], this.shots[index]];
    this.list.replaceChildren(...this.shots.map((s) => s.node));
    this.renumber();
    shot.node.querySelector(`[data-action="${action}"]`).focus();
  }

  renumber() {
    const last = this.shots.length - 1;
    this.shots.forEach((shot, i) => {
      shot.legend.textContent = `Shot ${i + 1}`;
      shot.node.querySelector('[data-action="up"]').disabled = i === 0;
      shot.node.querySelector('[data-action="down"]').disabled = i === last;
      shot.node.querySelector('[data-action="remove"]').disabled = last === 0;
    });
    this.addButton.disabled = this.shots.length >= this.catalogue.maxShots;
    this.onChange();
  }

  problem() {
    for (const shot of this.shots) {
      const found = shot.problem();
      if (found) return found;
    }
    return null;
  }

  // The contract's shots array; local images are uploaded first.
  async request(upload, onUploading) {
    const shots = [];
    for (const [i, shot] of this.shots.entries()) {
      const entry = {
        id: `shot-${i + 1}`,
        prompt: shot.prompt.value.trim(),
        generationType: shot.type.value,
        aspectRatio: shot.aspect.value,
      };
      const urls = await shot.picker.urls(upload, onUploading);
      if (urls.length) entry.imageUrls = urls;
      shots.push(entry);
    }
    return shots;
  }
}
