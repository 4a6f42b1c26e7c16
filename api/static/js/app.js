// The dashboard shell: sign-in state, the top bar, and a fragment router (#/jobs, #/jobs/<id>,
// #/new, #/compare, #/sweeps, #/sweeps/<id>). Each view exports mount(root, ctx) and returns a
// function that stops it.

import { api, session } from "./api.js";
import { clear } from "./dom.js";
import * as compareView from "./views/compare.js";
import * as jobView from "./views/job.js";
import * as jobsView from "./views/jobs.js";
import * as signinView from "./views/signin.js";
import * as submitView from "./views/submit.js";
import * as sweepsView from "./views/sweeps.js";

const main = document.getElementById("main");
const banner = document.getElementById("banner");
let unmount = null;

/** Parse "#/jobs/abc?x=1" into {parts: ["jobs", "abc"], query: URLSearchParams}. */
export function parseRoute(hash) {
  const raw = (hash || "").replace(/^#\/?/, "");
  const [path, qs = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(qs) };
}

export function navigate(hash) {
  if (window.location.hash === hash) route();
  else window.location.hash = hash;
}

/** A message across the top of the page (kind: info | error); null hides it. */
export function notify(message, kind = "info") {
  if (!message) {
    banner.hidden = true;
    banner.textContent = "";
    return;
  }
  banner.textContent = message;
  banner.className = `banner banner-${kind}`;
  banner.hidden = false;
}

function renderChrome() {
  const me = session.me;
  const signedIn = Boolean(session.key);
  document.querySelector(".mainnav").hidden = !signedIn;
  document.querySelector(".who").hidden = !signedIn;
  const who = document.getElementById("who");
  if (signedIn && me) {
    const team = me.team?.name ?? me.team ?? "team";
    const key = me.key?.name ?? me.key_name ?? me.name ?? "";
    who.textContent = key ? `${team} · ${key}` : String(team);
    who.title = "Team and API key of this session";
  } else {
    who.textContent = "";
  }
}

function pickView(parts) {
  const [first, second] = parts;
  if (first === "jobs" && second) return [jobView, { id: second }];
  if (first === "new") return [submitView, {}];
  if (first === "compare") return [compareView, {}];
  if (first === "sweeps") return [sweepsView, { id: second }];
  return [jobsView, {}];
}

function markNav(parts) {
  const current = parts[0] === "jobs" && parts[1] ? "" : parts[0] || "jobs";
  for (const a of document.querySelectorAll(".mainnav a")) {
    if (a.dataset.nav === current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function route() {
  if (unmount) unmount();
  unmount = null;
  notify(null);
  clear(main);
  renderChrome();
  const { parts, query } = parseRoute(window.location.hash);
  const ctx = { query, navigate, notify, onSignedIn };
  if (!session.key) {
    markNav([]);
    document.title = "Sign in · Spruce";
    unmount = signinView.mount(main, ctx);
    return;
  }
  markNav(parts);
  const [view, params] = pickView(parts);
  unmount = view.mount(main, { ...ctx, ...params }) || null;
  // Move focus to the new content for keyboard and screen-reader users, without scrolling.
  main.focus({ preventScroll: true });
}

function onSignedIn() {
  const { parts } = parseRoute(window.location.hash);
  if (parts.length === 0 || parts[0] === "signin") navigate("#/jobs");
  else route();
}

function signOut(message) {
  session.clear();
  route();
  if (message) notify(message, "error");
}

window.addEventListener("hashchange", route);
window.addEventListener("spruce:unauthorized", () =>
  signOut("Your API key is no longer accepted. Sign in again."),
);
document.getElementById("signout").addEventListener("click", () => signOut(null));

// A saved session is re-checked once so a revoked key does not leave a half-working page.
if (session.key) {
  const checked = session.key;
  api("/v1/me")
    .then((me) => {
      // Signed out (or in with another key) while this was in flight: saving would store the
      // key as the string "null", or pair the new key with the old key's identity.
      if (session.key !== checked) return;
      session.save(checked, me);
      renderChrome();
    })
    .catch(() => {});
}
route();
