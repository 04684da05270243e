// People and rooms (protocol §6.2): the "new room" dialog (a name, and members picked
// from the server's users, each of whom can also be messaged directly), and the members
// panel of the open room (online dots, last seen, and what an owner or anyone may do).

import { byId, el, fullTime } from "../dom.js";

const SEARCH_DELAY_MS = 200;

// "online", or when the person was last seen, for a dot's label.
export function presenceText(person) {
  if (person.online) return "online";
  return person.last_seen ? `offline, last seen ${fullTime(person.last_seen)}` : "offline";
}

function dot(person) {
  const node = el("span", person.online ? "dot online" : "dot");
  node.setAttribute("role", "img");
  node.setAttribute("aria-label", presenceText(person));
  node.title = presenceText(person);
  return node;
}

function personName(text) {
  const name = el("span", "person-name", text);
  name.dir = "auto";
  return name;
}

// A small text button beside a person; `control` lets focus find it again after a redraw.
function personButton(text, label, onClick, control) {
  const node = el("button", "link", text);
  node.type = "button";
  node.setAttribute("aria-label", label);
  if (control) node.dataset.control = control;
  node.addEventListener("click", onClick);
  return node;
}

function searchAsYouType(input, run) {
  let timer = null;
  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => run(input.value.trim()), SEARCH_DELAY_MS);
  });
}

export class NewRoomDialog {
  // onSearch(query), onCreate(name, memberIds), onMessage(userId)
  constructor({ onSearch, onCreate, onMessage }) {
    this.dialog = byId("new-room-dialog");
    this.form = byId("new-room-form");
    this.name = byId("new-room-name");
    this.query = byId("new-room-search");
    this.results = byId("new-room-users");
    this.error = byId("new-room-error");
    this.create = byId("new-room-create");
    this.picked = new Map();  // user id -> username
    this.onMessage = onMessage;
    this.me = null;
    byId("new-room").addEventListener("click", () => this.open());
    byId("new-room-cancel").addEventListener("click", () => this.dialog.close());
    searchAsYouType(this.query, onSearch);
    // Enter in the search box searches at once; it does not create the room.
    this.query.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); onSearch(this.query.value.trim()); }
    });
    this.onSearch = onSearch;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const name = this.name.value.trim();
      if (!name) { this.error.textContent = "Give the room a name."; this.name.focus(); return; }
      if (onCreate(name, [...this.picked.keys()])) this.create.disabled = true;  // until the answer
    });
  }

  open() {
    this.form.reset();
    this.picked.clear();
    this.create.disabled = false;
    this.error.textContent = "";
    this.results.replaceChildren();
    this.dialog.showModal();
    this.name.focus();
    this.onSearch("");
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }

  failed(message) {
    this.create.disabled = false;
    this.error.textContent = message;
  }

  showUsers(users) {
    if (!this.dialog.open) return;
    const others = users.filter((user) => user.id !== this.me?.id);
    this.results.replaceChildren(...others.map((user) => this.userRow(user)));
    if (!others.length) this.results.append(el("li", "empty", "Nobody by that name"));
  }

  userRow(user) {
    const row = el("li", "person");
    const label = el("label");
    const box = el("input");
    box.type = "checkbox";
    box.checked = this.picked.has(user.id);
    box.addEventListener("change", () => {
      if (box.checked) this.picked.set(user.id, user.username); else this.picked.delete(user.id);
    });
    label.append(box, dot(user), personName(user.first_name ? `${user.username} (${user.first_name})` : user.username));
    row.append(label, personButton("Message", `Message ${user.username}`, () => this.onMessage(user.id)));
    return row;
  }
}

export class MembersPanel {
  // onMessage(userId), onRemove(roomId, userId), onAdd(roomId, userId), onRename(roomId, name),
  // onLeave(roomId), onSearch(query), onToggle(open)
  constructor(handlers) {
    this.handlers = handlers;
    this.panel = byId("members");
    this.list = byId("member-list");
    this.toggle = byId("members-toggle");
    this.ownerTools = byId("owner-tools");
    this.renameInput = byId("rename-input");
    this.addInput = byId("add-member-search");
    this.addResults = byId("add-member-users");
    this.room = null;
    this.shownRoomId = null;  // the room whose add-people search the panel shows
    this.me = null;
    this.toggle.addEventListener("click", () => this.setOpen(this.panel.hidden));
    byId("members-close").addEventListener("click", () => this.closeToToggle());
    this.panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") { event.preventDefault(); this.closeToToggle(); }
    });
    byId("rename-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const name = this.renameInput.value.trim();
      if (this.room && name && name !== this.room.name) handlers.onRename(this.room.id, name);
    });
    byId("leave-room").addEventListener("click", () => {
      // eslint-disable-next-line no-alert
      if (this.room && window.confirm(`Leave ${this.room.name}?`)) handlers.onLeave(this.room.id);
    });
    searchAsYouType(this.addInput, (query) => { if (query) handlers.onSearch(query); else this.addResults.replaceChildren(); });
  }

  get open() {
    return !this.panel.hidden;
  }

  setOpen(open) {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    byId("app").classList.toggle("with-members", open);
    this.handlers.onToggle(open);
    if (open) {
      this.render(this.room);
      byId("members-close").focus();  // (on a phone the panel covers the room)
    }
  }

  closeToToggle() {
    this.setOpen(false);
    this.toggle.focus();
  }

  // The open room (or null): the toggle's count, and the panel when it is open.
  render(room) {
    this.room = room;
    this.toggle.hidden = room === null;
    if (room === null) { this.setOpenQuietly(false); return; }
    const count = room.participants.length;
    this.toggle.textContent = `Members ${count}`;
    this.toggle.setAttribute("aria-label", `Members: ${count}`);
    if (!this.open) return;
    const changedRoom = this.shownRoomId !== room.id;
    this.shownRoomId = room.id;
    const owner = this.me !== null && room.owner_id === this.me.id;
    const direct = room.room_type === "direct";
    this.ownerTools.hidden = !owner;
    byId("add-member").hidden = !owner || direct;
    if (changedRoom || document.activeElement !== this.renameInput) this.renameInput.value = room.name;
    if (changedRoom) { this.addInput.value = ""; this.addResults.replaceChildren(); }
    const people = [...room.participants].sort((a, b) => (b.online - a.online) || a.username.localeCompare(b.username));
    // Rows are rebuilt: a focused button comes back in its redrawn row (or the list takes it).
    const active = this.list.contains(document.activeElement) ? document.activeElement : null;
    const row = active?.closest("[data-user-id]")?.dataset.userId;
    const control = active?.dataset.control;
    this.list.replaceChildren(...people.map((person) => this.memberRow(person, owner && !direct)));
    if (active !== null) {
      const again = this.list.querySelector(`[data-user-id="${row}"] [data-control="${control}"]`);
      (again ?? byId("members-close")).focus();
    }
  }

  setOpenQuietly(open) {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    byId("app").classList.toggle("with-members", open);
  }

  memberRow(person, mayRemove) {
    const row = el("li", "person");
    row.dataset.userId = person.id;
    const me = this.me !== null && person.id === this.me.id;
    const seen = el("span", "person-seen", person.online ? "online" : (person.last_seen ? `seen ${fullTime(person.last_seen)}` : ""));
    seen.setAttribute("aria-hidden", "true");
    row.append(dot(person), personName(me ? `${person.username} (you)` : person.username), seen);
    if (!me) {
      row.append(personButton("Message", `Message ${person.username}`, () => this.handlers.onMessage(person.id),
        "message"));
      if (mayRemove) {
        row.append(personButton("Remove", `Remove ${person.username} from the room`,
          () => this.handlers.onRemove(this.room.id, person.id), "remove"));
      }
    }
    return row;
  }

  showUsers(users) {
    if (!this.room) return;
    const inRoom = new Set(this.room.participants.map((person) => person.id));
    const candidates = users.filter((user) => !inRoom.has(user.id));
    this.addResults.replaceChildren(...candidates.map((user) => {
      const row = el("li", "person");
      row.append(dot(user), personName(user.username), personButton("Add", `Add ${user.username} to the room`, () => {
        this.handlers.onAdd(this.room.id, user.id);
        row.remove();
        this.addInput.focus();
      }));
      return row;
    }));
    if (!candidates.length) this.addResults.append(el("li", "empty", "Nobody else by that name"));
  }
}
