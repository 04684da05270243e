// The sign-in form: shown with a reason, hands the pasted token on.

import { byId } from "../dom.js";

export class SignInView {
  constructor({ onToken }) {
    this.form = byId("signin-form");
    this.input = byId("token-input");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const token = this.input.value.trim();
      if (!token) return;
      this.input.value = "";
      onToken(token);
    });
  }

  show(message) {
    byId("signin-message").textContent = message || "";
    byId("app").hidden = true;
    byId("signin").hidden = false;
    this.input.focus();
  }

  hide() {
    byId("signin").hidden = true;
    byId("app").hidden = false;
  }
}
