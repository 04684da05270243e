// Small DOM helpers shared by the views. User text only ever goes in through textContent.

export const byId = (id) => document.getElementById(id);

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : date.toLocaleDateString();
}

export function fullTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

// Runs `change` (which may move or drop nodes inside `container`) without losing the
// keyboard focus: a focused node that moved is focused again; one that left the page
// hands focus to the control that replaced it (a message redrawn after an edit or a
// reaction: the same control of the same message), or else to `fallback`.
export function keepingFocus(container, change, fallback = container) {
  const active = document.activeElement;
  const inside = active !== null && active !== container && container.contains(active);
  const message = inside ? active.closest("[data-message-id]") : null;
  const control = inside ? active.dataset.control : undefined;
  change();
  if (!inside || document.activeElement === active) return;
  if (active.isConnected) { active.focus({ preventScroll: true }); return; }
  const redrawn = message && container.querySelector(`[data-message-id="${message.dataset.messageId}"]`);
  if (redrawn) {
    redrawn.focus({ preventScroll: true });  // (its actions show while it holds the focus)
    const same = control && [...redrawn.querySelectorAll("[data-control]")].find((node) => node.dataset.control === control);
    if (same) same.focus({ preventScroll: true });
    return;
  }
  fallback.focus({ preventScroll: true });
}

// Coalesces calls into one run per frame; a page in the background (no frames) still
// runs it within 100 ms, so its state never lags far behind.
export function batched(run) {
  let pending = false;
  const fire = () => {
    if (!pending) return;
    pending = false;
    run();
  };
  return () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(fire);
    setTimeout(fire, 100);
  };
}
