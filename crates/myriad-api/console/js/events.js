// Live updates: Server-Sent Events from GET /api/v1/events (cookie auth). When the stream
// cannot be opened (or is refused), `poll` runs every few seconds instead so the page still
// follows the fleet; `resync` refetches what the page shows once the stream is open (changes
// before it came as no event), after a reconnect, and on a `lagged` event.

/**
 * Opens the event stream. handlers: {presence, command, rollout, shadow, overview, ota, resync}.
 * Returns a close function.
 */
export function liveEvents({ types, device, handlers, poll, pollMs = 5000 }) {
  const q = new URLSearchParams({ types: types.join(',') });
  if (device) q.set('device', device);
  let timer = null;
  let closed = false;
  const source = new EventSource(`/api/v1/events?${q}`);
  for (const type of types) {
    if (!handlers[type]) continue;
    source.addEventListener(type, (e) => {
      let data;
      try { data = JSON.parse(e.data); } catch (_) { return; }
      handlers[type](data);
    });
  }
  source.addEventListener('lagged', () => { if (handlers.resync) handlers.resync(); });
  source.addEventListener('open', () => {
    document.body.dataset.live = 'sse';
    if (timer) { clearInterval(timer); timer = null; }
    // Changes between the page's first fetch and the stream's start (or, after a reconnect,
    // during the gap) came as no event: fetch what the page shows once more.
    if (handlers.resync) handlers.resync();
  });
  source.addEventListener('error', () => {
    if (closed) return;
    if (source.readyState === EventSource.CLOSED && poll && !timer) {
      document.body.dataset.live = 'poll';
      timer = setInterval(poll, pollMs);
    }
  });
  return () => {
    closed = true;
    source.close();
    if (timer) clearInterval(timer);
  };
}
