// One device: presence and last seen (live), session, shadow with a versioned JSON editor
// (409 conflicts shown), commands (send, live status, cancel), telemetry charts per metric
// with range and aggregation, OTA state, recent events.
import { ApiError, api, withQuery } from '../api.js';
import { lineChart } from '../chart.js';
import { can } from '../session.js';
import {
  ago, arrayPager, badge, busy, coalesce, confirmAction, cursorPager, errorLine, field, fmtTime, h, pretty,
  replace, section, table, toast,
} from '../ui.js';
import { deviceActions } from './devices.js';

const FINAL = new Set(['succeeded', 'failed', 'timed_out', 'expired', 'cancelled']);
const RANGES = [['900000', 'last 15 minutes'], ['3600000', 'last hour'], ['21600000', 'last 6 hours'],
  ['86400000', 'last day'], ['604800000', 'last 7 days']];
const AGGS = [['', 'raw points'], ['avg', 'average'], ['min', 'minimum'], ['max', 'maximum'],
  ['sum', 'sum'], ['count', 'count'], ['last', 'last'], ['rate', 'rate']];

/** MQTT protocol level as its version name. */
function mqttVersion(level) {
  return { 3: 'MQTT 3.1', 4: 'MQTT 3.1.1', 5: 'MQTT 5.0' }[level] || '—';
}

async function maybe(path) {
  try {
    return await api('GET', path);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    throw err;
  }
}

export async function render(main, ctx, id) {
  const base = `/api/v1/devices/${encodeURIComponent(id)}`;
  let device = await api('GET', base);

  // --- header, presence, session ---------------------------------------------------------
  const head = h('div', { class: 'device-head' });
  const presenceBox = h('div');
  const sessionBox = h('div');
  let presence = null;
  function drawHead() {
    const actions = deviceActions(device, async (deleted) => {
      if (deleted) { location.hash = '#/devices'; return; }
      device = await api('GET', base);
      drawHead();
    });
    replace(head,
      h('h1', null, 'Device ', h('code', null, device.id), ' ', h('span', { id: 'presence-badge' }, badge(!!(presence && presence.online)))),
      h('dl', { class: 'facts' },
        h('dt', null, 'Name'), h('dd', null, device.name || '—'),
        h('dt', null, 'Groups'), h('dd', null, device.groups.join(', ') || '—'),
        h('dt', null, 'Attributes'), h('dd', null, Object.entries(device.attributes).map(([k, v]) => `${k}=${v}`).join(', ') || '—'),
        h('dt', null, 'Enabled'), h('dd', null, device.enabled ? 'yes' : 'no'),
        h('dt', null, 'Created'), h('dd', null, fmtTime(device.created_at))),
      actions);
  }
  function drawPresence() {
    const p = presence || {};
    const badgeBox = document.getElementById('presence-badge');
    if (badgeBox) replace(badgeBox, badge(!!p.online));
    replace(presenceBox, h('dl', { class: 'facts' },
      h('dt', null, 'Presence'), h('dd', { id: 'presence-state' }, badge(!!p.online)),
      h('dt', null, 'Last seen'), h('dd', { id: 'last-seen', title: fmtTime(p.last_seen) }, p.last_seen ? `${fmtTime(p.last_seen)} (${ago(p.last_seen)})` : 'never'),
      h('dt', null, 'Last connected'), h('dd', null, fmtTime(p.last_connected_at)),
      h('dt', null, 'Last disconnected'), h('dd', null, fmtTime(p.last_disconnected_at)),
      h('dt', null, 'Disconnect reason'), h('dd', null, p.disconnect_reason || '—'),
      h('dt', null, 'Address'), h('dd', null, p.address || '—'),
      h('dt', null, 'Protocol'), h('dd', null, mqttVersion(p.protocol))));
  }
  async function loadPresence() {
    presence = await maybe(`${base}/presence`);
    drawPresence();
  }
  async function loadSession() {
    const s = await maybe(`${base}/session`);
    if (!s) { replace(sessionBox, h('p', { class: 'empty' }, 'No session.')); return; }
    replace(sessionBox,
      h('dl', { class: 'facts' },
        h('dt', null, 'Connected'), h('dd', null, s.connected ? 'yes' : 'no'),
        h('dt', null, 'Client id'), h('dd', null, s.client_id),
        h('dt', null, 'Protocol'), h('dd', null, mqttVersion(s.protocol)),
        h('dt', null, 'Clean start'), h('dd', null, s.clean_start === null || s.clean_start === undefined ? '—' : s.clean_start ? 'yes' : 'no'),
        h('dt', null, 'Session expiry'), h('dd', null, s.expiry_secs >= 4294967295 ? 'never' : `${s.expiry_secs} s`),
        h('dt', null, 'Queued'), h('dd', null, `${s.queued_messages} messages, ${s.queued_bytes} bytes`),
        h('dt', null, 'In flight'), h('dd', null, String(s.inflight))),
      table('Subscriptions', ['Filter', 'QoS'], (s.subscriptions || []).map((x) => [h('code', null, x.filter), String(x.qos)]), 'No subscriptions.'),
      s.subscriptions_truncated ? h('p', { class: 'muted' }, 'More subscriptions than listed (the first 1,000 are shown).') : null);
  }

  // --- shadow ----------------------------------------------------------------------------
  const shadowBox = h('div');
  const shadowErr = errorLine();
  let shadow = null;
  let dirty = false;
  const editor = h('textarea', { id: 'shadow-editor', rows: 8, spellcheck: 'false', class: 'code', oninput: () => { dirty = true; } });
  const versionOut = h('output', { id: 'shadow-version' });
  function drawShadow() {
    const state = (shadow && shadow.state) || {};
    const block = (title, value, hid) => h('div', { class: 'json-block' }, h('h3', null, title),
      h('pre', { id: hid, class: 'code' }, value === undefined ? '—' : pretty(value)));
    replace(shadowBox,
      h('p', null, 'Version ', h('strong', { id: 'shadow-current-version' }, shadow ? String(shadow.version) : '0'),
        shadow && shadow.version ? ` · updated ${fmtTime(shadow.timestamp)}` : ' (nothing set yet)'),
      h('div', { class: 'json-grid' },
        block('Desired', state.desired, 'shadow-desired'),
        block('Reported', state.reported, 'shadow-reported'),
        block('Delta', state.delta, 'shadow-delta')));
    if (!dirty) {
      editor.value = pretty((state.desired) || {});
      versionOut.value = shadow ? String(shadow.version) : '0';
    }
  }
  async function loadShadow() {
    shadow = await maybe(`${base}/shadow`);
    drawShadow();
  }
  const sendShadow = h('button', { type: 'submit', class: 'primary' }, 'Send desired state');
  const shadowForm = h('form', { 'aria-label': 'Edit desired state' },
    h('div', { class: 'field' }, h('label', { for: 'shadow-editor' }, 'Desired state (JSON; null removes a key)'), editor),
    h('p', null, 'Sent with version ', versionOut, ': if the shadow changed since, the server refuses it (409).'),
    shadowErr,
    h('div', { class: 'actions' }, sendShadow,
      h('button', { type: 'button', onclick: () => { dirty = false; loadShadow(); shadowErr.clear(); } }, 'Reload')));
  shadowForm.addEventListener('submit', (e) => {
    e.preventDefault();
    let desired;
    try {
      desired = JSON.parse(editor.value);
    } catch (err) {
      shadowErr.show(`Not valid JSON: ${err.message}`);
      return;
    }
    const version = Number(versionOut.value);
    busy(sendShadow, async () => {
      try {
        shadow = await api('PATCH', `${base}/shadow`, version ? { desired, version } : { desired });
        dirty = false;
        drawShadow();
        toast(`Shadow updated to version ${shadow.version}`);
      } catch (err) {
        if (err instanceof ApiError && err.status === 409) {
          shadowErr.show(`Version conflict: ${err.message}. Someone changed the shadow after version ${version}; `
            + 'press Reload to see the current state (your edit stays in the editor until then).');
          shadowErr.classList.add('conflict');
          return;
        }
        throw err;
      }
    }, shadowErr);
  });

  // --- commands --------------------------------------------------------------------------
  const cmdErr = errorLine();
  const cmdRows = h('div');
  const cmdPager = cursorPager('Commands', async (before) => {
    try {
      const page = await api('GET', withQuery(`${base}/commands`, { limit: 10, before }));
      drawCommands(page.items);
      return page;
    } catch (err) { cmdErr.show(err); return null; }
  });
  function drawCommands(items) {
    const headers = ['Command', 'Name', 'Status', 'Updated', 'Result'];
    if (can('operate')) headers.push('');
    replace(cmdRows, table('Commands', headers, items.map((c) => {
      const last = Math.max(0, ...Object.values(c.timestamps || {}));
      const row = [h('code', null, c.id.slice(0, 12)), c.name,
        h('span', { class: `status ${c.status}`, dataset: { command: c.id } }, c.status + (c.reason ? ` (${c.reason})` : '')),
        fmtTime(last), c.result === undefined || c.result === null ? '—' : h('code', null, JSON.stringify(c.result).slice(0, 120))];
      if (can('operate')) {
        const cancel = h('button', {
          type: 'button',
          class: 'danger',
          onclick: async () => {
            if (!await confirmAction(`Cancel command ${c.name} (${c.id})?`, 'Cancel command')) return;
            await busy(cancel, async () => { await api('DELETE', `/api/v1/commands/${c.id}`); cmdPager.reload(); });
          },
        }, 'Cancel');
        row.push(FINAL.has(c.status) ? '' : cancel);
      }
      return row;
    }), 'No commands yet.'));
  }
  const sendCmd = h('button', { type: 'submit', class: 'primary' }, 'Send command');
  const cmdForm = h('form', { class: 'grid-form', 'aria-label': 'Send a command' },
    field('Command name', { name: 'name', required: true, pattern: '[A-Za-z0-9_.\\-]+' }),
    field('Payload (JSON)', { name: 'payload', type: 'textarea', rows: 3, class: 'code', value: '{}' }),
    field('Priority', { name: 'priority', type: 'select', options: [['l2', 'L2 (normal)'], ['l1', 'L1 (critical)'], ['l3', 'L3 (bulk)']] }),
    field('Reply timeout (ms)', { name: 'timeout_ms', type: 'number', min: 1, placeholder: 'default' }),
    cmdErr, sendCmd);
  cmdForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = new FormData(cmdForm);
    let payload;
    try {
      payload = JSON.parse(d.get('payload') || 'null');
    } catch (err) {
      cmdErr.show(`Payload is not valid JSON: ${err.message}`);
      return;
    }
    const body = { name: d.get('name'), payload, priority: d.get('priority') };
    if (d.get('timeout_ms')) body.timeout_ms = Number(d.get('timeout_ms'));
    busy(sendCmd, async () => {
      const c = await api('POST', `${base}/commands`, body);
      toast(`Command ${c.name} ${c.status}`);
      cmdPager.first();
    }, cmdErr);
  });

  // --- telemetry -------------------------------------------------------------------------
  const telErr = errorLine();
  const chartBox = h('div', { class: 'chart', id: 'telemetry-chart' });
  const telForm = h('form', { class: 'filters', 'aria-label': 'Telemetry' },
    field('Metric', { name: 'metric', type: 'select', options: [] }),
    field('Range', { name: 'range', type: 'select', options: RANGES, value: '3600000' }),
    field('Aggregation', { name: 'agg', type: 'select', options: AGGS }),
    h('button', { type: 'submit' }, 'Show'));
  const latestBox = h('div');
  let chart = null;
  ctx.onCleanup(() => { if (chart) chart.destroy(); });
  async function loadLatest() {
    const latest = await maybe(`${base}/telemetry/latest`);
    const metrics = latest ? Object.keys(latest.metrics || {}) : [];
    const select = telForm.elements.metric;
    const keep = select.value;
    replace(select, metrics.map((m) => h('option', { value: m }, m)));
    if (metrics.includes(keep)) select.value = keep;
    replace(latestBox, table('Latest values', ['Metric', 'Value', 'At'],
      Object.entries((latest && latest.metrics) || {}).map(([m, p]) => [m,
        typeof p.value === 'number' ? String(Number(p.value.toPrecision(6))) : String(p.value), fmtTime(p.ts)]), 'No telemetry yet.'));
    return metrics;
  }
  async function loadChart() {
    telErr.clear();
    const d = new FormData(telForm);
    const metric = d.get('metric');
    if (!metric) { replace(chartBox, h('p', { class: 'empty' }, 'No metric to chart.')); return; }
    const range = Number(d.get('range'));
    const to = Date.now() + 1000;
    const from = to - range;
    const agg = d.get('agg');
    const step = agg ? Math.max(1000, Math.ceil(range / 200 / 1000) * 1000) : undefined;
    try {
      const r = await api('GET', withQuery(`${base}/telemetry`, { metrics: metric, from, to, step, agg }));
      const s = (r.series || []).find((x) => x.metric === metric) || { points: [] };
      const pts = s.points.map(([ts, v]) => [ts / 1000, typeof v === 'boolean' ? Number(v) : v]);
      const data = [pts.map((p) => p[0]), pts.map((p) => p[1])];
      if (chart) chart.destroy();
      replace(chartBox);
      chartBox.dataset.points = String(pts.length);
      chart = lineChart(chartBox, `${metric}${agg ? ` (${agg} per ${step / 1000} s)` : ''}`, [metric], data);
    } catch (err) { telErr.show(err); }
  }
  telForm.addEventListener('submit', (e) => { e.preventDefault(); loadChart(); });

  // --- OTA and events --------------------------------------------------------------------
  const otaBox = h('div');
  async function loadOta() {
    const o = await maybe(`${base}/ota`);
    if (!o || !Object.keys(o).length) { replace(otaBox, h('p', { class: 'empty' }, 'No OTA state known.')); return; }
    replace(otaBox, h('dl', { class: 'facts' },
      h('dt', null, 'Installed version'), h('dd', null, o.installed_version || '—'),
      h('dt', null, 'Rollout'), h('dd', null, o.rollout ? h('a', { href: `#/rollouts/${encodeURIComponent(o.rollout)}` }, o.rollout) : '—'),
      h('dt', null, 'Target version'), h('dd', null, o.target_version || '—'),
      h('dt', null, 'State'), h('dd', { id: 'ota-state' }, o.state || '—'),
      h('dt', null, 'Updated'), h('dd', null, fmtTime(o.updated_ms))));
  }
  const eventsBox = h('div');
  const eventsPager = arrayPager('Recent events', (rows) => replace(eventsBox, table('Recent events', ['When', 'Kind', 'Detail'],
    rows.map((e) => [fmtTime(e.at_ms), e.kind, typeof e.detail === 'string' ? e.detail : JSON.stringify(e.detail)]), 'No events yet.')), 10);
  async function loadEvents() {
    const r = await maybe(withQuery(`${base}/events`, { limit: 50 }));
    eventsPager.set(r ? r.items : []);
  }

  // Live events come in bursts: each loader runs one fetch at a time, so a slow answer never
  // draws over a newer one.
  loadPresence = coalesce(loadPresence);
  loadSession = coalesce(loadSession);
  loadShadow = coalesce(loadShadow);
  loadOta = coalesce(loadOta);
  loadEvents = coalesce(loadEvents);

  const parts = [head,
    h('div', { class: 'two' }, section('Presence', presenceBox), section('Session', sessionBox)),
    section('Shadow', shadowBox, can('operate') ? shadowForm : null),
    section('Commands', can('operate') ? cmdForm : null, cmdRows, cmdPager.el),
    section('Telemetry', telForm, telErr, chartBox, latestBox),
    h('div', { class: 'two' }, section('OTA', otaBox), section('Recent events', eventsBox, eventsPager.el))];
  replace(main, parts);
  drawHead();
  const soft = (p) => p.catch((err) => toast(err.message, 'error'));
  await Promise.all([soft(loadPresence()), soft(loadSession()), soft(loadShadow()), soft(cmdPager.first()),
    soft(loadOta()), soft(loadEvents()), soft(loadLatest().then(loadChart))]);

  const refreshAll = () => {
    soft(loadPresence()); soft(loadSession()); soft(loadShadow()); soft(cmdPager.reload()); soft(loadOta()); soft(loadEvents());
  };
  ctx.live({
    types: ['presence', 'command', 'shadow', 'ota'],
    device: id,
    handlers: {
      presence(p) {
        presence = { ...(presence || {}), online: p.online, last_seen: p.at_ms,
          ...(p.online ? { last_connected_at: p.at_ms } : { last_disconnected_at: p.at_ms, disconnect_reason: p.reason }) };
        drawPresence();
        soft(loadSession()); soft(loadEvents());
      },
      command() { soft(cmdPager.reload()); soft(loadEvents()); },
      shadow() { soft(loadShadow()); soft(loadEvents()); },
      ota() { soft(loadOta()); soft(loadEvents()); },
      resync: refreshAll,
    },
    poll: refreshAll,
  });
  // Last seen moves while connected (flushed every devices.last_seen_flush_secs): refresh it.
  ctx.every(15000, () => { soft(loadPresence()); soft(loadLatest()); });
}
