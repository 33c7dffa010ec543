// Overview: the fleet's numbers now, watchdog alerts, recent presence changes, and charts of
// the last hour fed live by the `overview` events (one sample every 5 s).
import { api } from '../api.js';
import { lineChart } from '../chart.js';
import { arrayPager, badge, fmtTime, h, num, replace, section, table } from '../ui.js';

const HOUR_MS = 3600 * 1000;

const CHARTS = [
  ['Connections and sessions', ['connections', 'sessions'], ['connections', 'sessions']],
  ['Messages per second', ['messages_in_per_sec', 'messages_out_per_sec'], ['in', 'out']],
  ['Dropped messages per second', ['dropped_per_sec'], ['dropped']],
  ['Store commit p99 (ms)', ['store_commit_p99_ms'], ['p99 ms']],
];

function stat(label, value, key) {
  return h('div', { class: 'stat', dataset: { key } },
    h('span', { class: 'stat-value' }, value), h('span', { class: 'stat-label' }, label));
}

export async function render(main, ctx) {
  let data = await api('GET', '/api/v1/overview');
  let history = data.history || [];
  const numbers = h('div', { class: 'stats', 'aria-live': 'polite' });
  const alerts = h('div');
  const presenceBox = h('div');
  const presence = arrayPager('Recent presence', (rows) => replace(presenceBox, table('Recent presence changes',
    ['Device', 'Presence', 'When', 'Reason'],
    rows.map((p) => [h('a', { href: `#/devices/${encodeURIComponent(p.device)}` }, p.device),
      badge(p.online), fmtTime(p.at_ms), p.reason || '']), 'No presence changes yet.')), 10);
  const chartBoxes = CHARTS.map(() => h('div', { class: 'chart' }));

  function drawNow() {
    const n = data.now || {};
    replace(numbers,
      stat('Connections', num(n.connections), 'connections'),
      stat('Sessions', num(n.sessions), 'sessions'),
      stat('Online devices', `${num(n.online_devices)} / ${num(n.registered_devices)}`, 'online'),
      stat('Messages in /s', num(n.messages_in_per_sec), 'in'),
      stat('Messages out /s', num(n.messages_out_per_sec), 'out'),
      stat('Dropped (total)', num(n.dropped_total), 'dropped'),
      stat('Dropped /s', num(n.dropped_per_sec), 'dropped_rate'),
      stat('Store commit p99', `${num(n.store_commit_p99_ms)} ms`, 'p99'));
    const list = n.watchdog_alerts || [];
    replace(alerts, list.length
      ? h('ul', { class: 'alerts' }, list.map((a) => h('li', { class: 'alert' },
        h('strong', null, a.kind), ` ${a.message} (since ${fmtTime(a.since_ms)})`)))
      : h('p', { class: 'empty' }, 'No watchdog alerts.'));
  }

  function series(keys) {
    return [history.map((s) => s.at_ms / 1000), ...keys.map((k) => history.map((s) => s[k] ?? null))];
  }

  replace(main,
    h('h1', null, 'Overview'),
    numbers,
    section('Watchdog alerts', alerts),
    h('div', { class: 'charts' }, chartBoxes.map((box, i) => h('section', { class: 'card', 'aria-label': CHARTS[i][0] }, box))),
    section('Recent presence changes', presenceBox, presence.el));
  drawNow();
  presence.set(data.recent_presence || []);
  const charts = CHARTS.map(([title, keys, labels], i) => lineChart(chartBoxes[i], title, labels, series(keys)));
  ctx.onCleanup(() => charts.forEach((c) => c.destroy()));

  const redrawCharts = () => CHARTS.forEach(([, keys], i) => charts[i].setData(series(keys)));
  let pending = null;
  ctx.onCleanup(() => clearTimeout(pending));
  const refetch = async () => {
    data = await api('GET', '/api/v1/overview');
    history = data.history || [];
    drawNow();
    presence.set(data.recent_presence || []);
    redrawCharts();
  };
  ctx.live({
    types: ['overview', 'presence'],
    handlers: {
      overview(sample) {
        history.push(sample);
        const cutoff = sample.at_ms - HOUR_MS;
        while (history.length && history[0].at_ms < cutoff) history.shift();
        Object.assign(data.now, sample);
        drawNow();
        redrawCharts();
      },
      presence(p) {
        const recent = [p, ...presence.items].slice(0, 50);
        presence.set(recent);
        // The counts come from the server (a takeover is two events, one device).
        clearTimeout(pending);
        pending = setTimeout(() => refetch().catch(() => {}), 1000);
      },
      resync: refetch,
    },
    poll: refetch,
  });
}
