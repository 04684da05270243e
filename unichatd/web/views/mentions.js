// "@" in a message box offers the open room's participants: Arrow keys choose, Enter
// or Tab inserts "@name ", Escape closes the list.

import { el } from "../dom.js";

const TYPED = /(^|[^\w@])@([\w.-]*)$/;
const SHOWN = 8;

export class MentionPicker {
  constructor(input, list, state) {
    this.input = input;
    this.list = list;
    this.state = state;
    this.options = [];
    this.at = 0;
    input.setAttribute("aria-autocomplete", "list");
    input.setAttribute("aria-controls", list.id);
    input.addEventListener("input", () => this.update());
    input.addEventListener("blur", () => setTimeout(() => this.close(), 150));
    // Capture: the list answers its keys before the composer sees them.
    input.addEventListener("keydown", (event) => this.onKey(event), true);
  }

  typed() {
    const before = this.input.value.slice(0, this.input.selectionStart);
    const match = before.match(TYPED);
    return match ? { prefix: match[2], start: before.length - match[2].length - 1 } : null;
  }

  update() {
    const typed = this.typed();
    this.options = typed ? this.state.mentionable(typed.prefix).slice(0, SHOWN) : [];
    this.at = 0;
    this.render();
  }

  render() {
    if (!this.options.length) { this.close(); return; }
    this.list.replaceChildren(...this.options.map((person, index) => {
      const option = el("li", "option", `@${person.username}`);
      option.id = `${this.list.id}-${index}`;
      option.setAttribute("role", "option");
      option.setAttribute("aria-selected", String(index === this.at));
      option.addEventListener("mousedown", (event) => { event.preventDefault(); this.pick(index); });
      return option;
    }));
    this.list.hidden = false;
    this.input.setAttribute("aria-activedescendant", `${this.list.id}-${this.at}`);
  }

  close() {
    this.options = [];
    this.list.hidden = true;
    this.list.replaceChildren();
    this.input.removeAttribute("aria-activedescendant");
  }

  pick(index) {
    const typed = this.typed();
    const person = this.options[index];
    if (!typed || !person) return;
    const value = this.input.value;
    const caret = this.input.selectionStart;
    const inserted = `@${person.username} `;
    this.input.value = value.slice(0, typed.start) + inserted + value.slice(caret);
    const end = typed.start + inserted.length;
    this.input.setSelectionRange(end, end);
    this.close();
    this.input.dispatchEvent(new Event("input"));
  }

  onKey(event) {
    if (!this.options.length) return;
    const moves = { ArrowDown: 1, ArrowUp: -1 };
    if (event.key in moves) {
      this.at = (this.at + moves[event.key] + this.options.length) % this.options.length;
      this.render();
    } else if (event.key === "Enter" || event.key === "Tab") {
      this.pick(this.at);
    } else if (event.key === "Escape") {
      this.close();
    } else {
      return;
    }
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}
