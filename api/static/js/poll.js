// Live updates by polling: the API is plain JSON, a one-second poll of one small resource is
// cheap, and it needs nothing from the server beyond the routes every client already uses.

/**
 * Call `fn(signal)` now and then every `intervalMs` until stopped. `fn` may return false to
 * stop by itself (e.g. once a job has finished). Errors go to `onError(error)`; the next
 * success calls `onError(null)`. A hidden tab polls five times less often.
 */
export function poller(fn, intervalMs, { onError = () => {} } = {}) {
  let stopped = false;
  let running = false;
  let again = false;
  let timer = null;
  let controller = null;

  async function tick() {
    if (stopped) return;
    running = true;
    controller = new AbortController();
    let keepGoing = true;
    try {
      keepGoing = (await fn(controller.signal)) !== false;
      if (!stopped) onError(null);
    } catch (e) {
      if (e?.name === "AbortError") return;
      if (!stopped) onError(e);
    } finally {
      running = false;
    }
    if (stopped || !keepGoing) return;
    if (again) {
      again = false;
      tick();
      return;
    }
    timer = setTimeout(tick, document.hidden ? intervalMs * 5 : intervalMs);
  }

  tick();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      controller?.abort();
    },
    /** Poll again now (after a user action), without overlapping a request in flight. */
    refresh() {
      if (stopped) return;
      if (running) {
        again = true;
        return;
      }
      clearTimeout(timer);
      tick();
    },
  };
}
