// The Downloads card of a succeeded job: its files with size and SHA-256, each with a button
// that downloads it through a short-lived link (docs/dashboard.md, the job page).

import { api, artifactPath, listOf, sameOrigin } from "../api.js";
import { clear, h } from "../dom.js";
import { DASH, fmtBytes } from "../format.js";
import { table } from "../table.js";

/**
 * The API's artifact listing shaped for display: [{name, filename, sizeText, sha, shaShort}].
 * `filename` is what the browser saves: "<job id>-<name>", with a name's "/" made "_" (a
 * download attribute cannot hold a folder).
 */
export function artifactRows(list, jobId) {
  return list.map((a) => {
    const name = String(a.name ?? a.path);
    return {
      name,
      filename: `${jobId}-${name.replaceAll("/", "_")}`,
      sizeText: fmtBytes(a.size ?? a.bytes),
      sha: a.sha256 || null,
      shaShort: a.sha256 ? `${a.sha256.slice(0, 12)}…` : DASH,
    };
  });
}

/**
 * Start a browser download of `url`. A same-origin link gets `filename` from the download
 * attribute; another origin's (presigned storage) names the file by its Content-Disposition.
 */
function followLink(url, filename) {
  const a = h("a", { href: url, download: filename, rel: "noopener", hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
}

function downloadButton(jobId, row, status) {
  const button = h(
    "button",
    {
      type: "button",
      class: "btn btn-small",
      "data-artifact": row.name,
      "aria-label": `Download ${row.name}`,
    },
    "Download",
  );
  button.addEventListener("click", async () => {
    button.disabled = true;
    status.textContent = `Downloading ${row.name}…`;
    try {
      // Ask for a short-lived link that needs no API key (a presigned object-storage URL, or a
      // signed URL of this API) and let the browser download it: the file streams to disk
      // instead of being held in memory as a blob, whatever its size.
      const link = await api(`${artifactPath(jobId, row.name)}?redirect=false`);
      followLink(link.url, row.filename);
      status.textContent = sameOrigin(link.url)
        ? `Downloading ${row.name} (${row.sizeText}).`
        : `Downloading ${row.name} from object storage (${row.sizeText}).`;
    } catch (e) {
      status.textContent = `Download of ${row.name} failed: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

/** Show `card` and fill it with the job's files (fetched once: a finished job's files stay). */
export async function loadArtifacts(card, jobId) {
  const heading = () => h("h2", { id: "artifacts-title" }, "Downloads");
  card.hidden = false;
  clear(card).append(heading(), h("p", { class: "muted" }, "Loading…"));
  let rows;
  try {
    rows = artifactRows(listOf(await api(`/v1/jobs/${encodeURIComponent(jobId)}/artifacts`)), jobId);
  } catch (e) {
    clear(card).append(heading(), h("p", { class: "field-error" }, e.message));
    return;
  }
  const status = h("p", { class: "help", role: "status", "aria-live": "polite" });
  const columns = [
    { label: "File", header: true, cls: "mono", cell: (r) => r.name },
    { label: "Size", num: true, cell: (r) => r.sizeText },
    { label: "SHA-256", cls: "mono muted", title: (r) => r.sha, cell: (r) => r.shaShort },
    { label: "Action", srOnly: true, cell: (r) => downloadButton(jobId, r, status) },
  ];
  clear(card).append(
    heading(),
    rows.length
      ? h("div", { class: "table-wrap" }, table(columns, rows, { class: "table compact" }))
      : h("p", { class: "muted" }, "This job has no files."),
    status,
  );
}
