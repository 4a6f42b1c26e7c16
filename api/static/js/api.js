// The /v1 API client: bearer-token auth, JSON in and out, typed errors.
//
// The key lives in sessionStorage: it survives reloads of this tab and is gone when the tab
// closes, and it is never written to a cookie, so no other site can make the browser send it.

const KEY_ITEM = "spruce.apiKey";
const ME_ITEM = "spruce.me";

export class ApiError extends Error {
  /** `status` is the HTTP status (0 for a network failure); code/param come from {"error": {...}}. */
  constructor(status, message, { code = null, param = null, body = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.param = param;
    this.body = body;
  }
}

export const session = {
  get key() {
    return sessionStorage.getItem(KEY_ITEM);
  },
  get me() {
    try {
      return JSON.parse(sessionStorage.getItem(ME_ITEM) || "null");
    } catch {
      return null;
    }
  },
  save(key, me) {
    sessionStorage.setItem(KEY_ITEM, key);
    sessionStorage.setItem(ME_ITEM, JSON.stringify(me));
  },
  clear() {
    sessionStorage.removeItem(KEY_ITEM);
    sessionStorage.removeItem(ME_ITEM);
  },
};

/** Turn an error body of any shape we may meet into an ApiError. */
function toApiError(status, body, fallback) {
  const err = body && typeof body === "object" ? body.error : null;
  if (err && typeof err === "object") {
    return new ApiError(status, err.message || fallback, { code: err.code, param: err.param, body });
  }
  // FastAPI's own shape, should a route bypass the service's error handler.
  const detail = body && typeof body === "object" ? body.detail : null;
  if (Array.isArray(detail) && detail.length) {
    const first = detail[0];
    const loc = (first.loc || []).filter((p) => p !== "body").join(".");
    return new ApiError(status, first.msg || fallback, { code: "invalid_request", param: loc || null, body });
  }
  if (typeof detail === "string") return new ApiError(status, detail, { body });
  if (typeof body === "string" && body.trim()) return new ApiError(status, body.trim().slice(0, 300), {});
  return new ApiError(status, fallback, { body });
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * Call the API. `json` sends a JSON body, `form` a FormData body; `key` overrides the session key
 * (used to check a key before saving it). Resolves with the parsed body; rejects with ApiError.
 * A 401 on a signed-in session fires "spruce:unauthorized" so the app can return to sign-in.
 */
export async function api(path, { method = "GET", json, form, key, signal } = {}) {
  const token = key ?? session.key;
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal, cache: "no-store" });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "The Spruce service cannot be reached. Is it running?", { code: "network" });
  }
  const parsed = await readBody(response);
  if (!response.ok) {
    const error = toApiError(response.status, parsed, `${response.status} ${response.statusText}`);
    if (response.status === 401 && key === undefined) {
      window.dispatchEvent(new CustomEvent("spruce:unauthorized", { detail: error }));
    }
    throw error;
  }
  return parsed;
}

/** A list endpoint may answer a bare array or {"data": [...]}; give the array either way. */
export function listOf(body) {
  if (Array.isArray(body)) return body;
  if (body && Array.isArray(body.data)) return body.data;
  return [];
}

/** Encode each segment of an artifact name (names may hold "/"). */
export function artifactPath(jobId, name) {
  const encoded = String(name).split("/").map(encodeURIComponent).join("/");
  return `/v1/jobs/${encodeURIComponent(jobId)}/artifacts/${encoded}`;
}

/** Whether `url` (absolute or relative) points at this origin, i.e. at the API itself. */
export function sameOrigin(url) {
  try {
    return new URL(url, window.location.href).origin === window.location.origin;
  } catch {
    return false;
  }
}
