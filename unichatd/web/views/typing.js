// "alice is typing…" under the open room's messages.

import { byId } from "../dom.js";

export function renderTyping(names) {
  const text = names.length === 0 ? "" :
    names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
  const node = byId("typing");
  if (node.textContent !== text) node.textContent = text;
}
