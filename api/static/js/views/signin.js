// Sign in with an API key: checked with GET /v1/me before it is kept for this tab.

import { api, session } from "../api.js";
import { h } from "../dom.js";

export function mount(root, ctx) {
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "api-key-help api-key-error",
  });
  const error = h("p", { id: "api-key-error", class: "field-error", role: "alert" });
  const button = h("button", { type: "submit", class: "btn btn-primary" }, "Sign in");

  async function onSubmit(event) {
    event.preventDefault();
    const key = input.value.trim();
    error.textContent = "";
    input.removeAttribute("aria-invalid");
    if (!key) {
      error.textContent = "Enter an API key.";
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    button.disabled = true;
    button.textContent = "Checking…";
    try {
      const me = await api("/v1/me", { key });
      session.save(key, me);
      ctx.onSignedIn();
    } catch (e) {
      error.textContent =
        e.status === 401 || e.status === 403
          ? `This API key was not accepted (${e.message}). Check it and try again.`
          : e.message;
      input.setAttribute("aria-invalid", "true");
      input.select();
      button.disabled = false;
      button.textContent = "Sign in";
    }
  }

  root.append(
    h(
      "section",
      { class: "signin card", "aria-labelledby": "signin-title" },
      h("h1", { id: "signin-title" }, "Sign in to Spruce"),
      h(
        "form",
        { class: "form", onsubmit: onSubmit, novalidate: true },
        h("label", { for: "api-key" }, "API key"),
        input,
        h(
          "p",
          { id: "api-key-help", class: "help" },
          "Your key is kept only in this browser tab and sent with each request. Create one with ",
          h("code", {}, "spruce keys create --team NAME"),
          ".",
        ),
        error,
        h("div", { class: "actions" }, button),
      ),
    ),
  );
  input.focus();
  return null;
}
