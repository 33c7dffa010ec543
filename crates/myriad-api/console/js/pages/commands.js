// Commands and batches: send a command to many devices (a list or a group), follow each batch's
// progress live, cancel it; look up one command by id (status, result, cancel); breakers.
import { api } from '../api.js';
import { can } from '../session.js';
import {
  arrayPager, busy, confirmAction, errorLine, field, fmtTime, h, list, pretty, replace, section, table, toast,
} from '../ui.js';

const KEY = 'myriad.console.batches';

function remembered() {
  try { return JSON.parse(sessionStorage.getItem(KEY) || '[]'); } catch (_) { return []; }
}

function remember(id) {
  const ids = [id, ...remembered().filter((x) => x !== id)].slice(0, 100);
  sessionStorage.setItem(KEY, JSON.stringify(ids));
}

export async function render(main, ctx) {
  const batchBox = h('div');
  const batchErr = errorLine();
  const batches = new Map();
  const pager = arrayPager('Batches', (ids) => replace(batchBox, table('Batches',
    ['Batch', 'Name', 'Created', 'Targets', 'Refused', 'By status', 'State', ''],
    ids.map((id) => {
      const b = batches.get(id);
      if (!b) return [h('code', null, id), '…', '', '', '', '', '', ''];
      const cancel = h('button', {
        type: 'button',
        class: 'danger',
        onclick: async () => {
          if (!await confirmAction(`Cancel batch ${b.name} (${b.id})? Targets not yet handled get no command.`, 'Cancel batch')) return;
          await busy(cancel, async () => { batches.set(id, await api('DELETE', `/api/v1/command-batches/${id}`)); pager.set(pager.items); });
        },
      }, 'Cancel');
      return [h('code', null, b.id.slice(0, 12)), b.name, fmtTime(b.created_at), String(b.targets), String(b.refused),
        Object.entries(b.statuses || {}).map(([s, n]) => `${s}: ${n}`).join(', ') || '—',
        b.cancelled ? 'cancelled' : b.dispatched ? 'dispatched' : 'dispatching',
        can('operate') && !b.cancelled ? cancel : ''];
    }), 'No batch sent from this browser yet; look one up by id below.')), 10);

  async function refreshBatches() {
    const ids = remembered();
    await Promise.all(ids.map(async (id) => {
      try { batches.set(id, await api('GET', `/api/v1/command-batches/${id}`)); } catch (err) { batchErr.show(err); }
    }));
    pager.set(ids);
  }

  const send = h('button', { type: 'submit', class: 'primary' }, 'Send to many');
  const sendErr = errorLine();
  const form = h('form', { class: 'grid-form', 'aria-label': 'Send a batch' },
    field('Devices (comma separated)', { name: 'devices' }),
    field('or group', { name: 'group' }),
    field('Command name', { name: 'name', required: true }),
    field('Payload (JSON)', { name: 'payload', type: 'textarea', rows: 3, class: 'code', value: '{}' }),
    field('Priority', { name: 'priority', type: 'select', options: [['l2', 'L2 (normal)'], ['l1', 'L1 (critical)'], ['l3', 'L3 (bulk)']] }),
    sendErr, send);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = new FormData(form);
    let payload;
    try { payload = JSON.parse(d.get('payload') || 'null'); } catch (err) { sendErr.show(`Payload is not valid JSON: ${err.message}`); return; }
    const body = { name: d.get('name'), payload, priority: d.get('priority') };
    if (d.get('group')) body.group = d.get('group'); else body.devices = list(d.get('devices'));
    busy(send, async () => {
      const r = await api('POST', '/api/v1/commands', body);
      remember(r.batch_id);
      toast(`Batch ${r.batch_id} accepted`);
      await refreshBatches();
    }, sendErr);
  });

  const lookErr = errorLine();
  const found = h('div');
  const look = h('form', { class: 'filters', role: 'search', 'aria-label': 'Look up a command or batch' },
    field('Command or batch id', { name: 'id', required: true }),
    h('button', { type: 'submit' }, 'Look up'));
  look.addEventListener('submit', async (e) => {
    e.preventDefault();
    lookErr.clear();
    const id = new FormData(look).get('id').trim();
    try {
      const c = await api('GET', `/api/v1/commands/${encodeURIComponent(id)}`);
      const cancel = h('button', {
        type: 'button',
        class: 'danger',
        onclick: async () => {
          if (!await confirmAction(`Cancel command ${c.name}?`, 'Cancel command')) return;
          await busy(cancel, async () => { await api('DELETE', `/api/v1/commands/${c.id}`); toast('Cancelled'); });
        },
      }, 'Cancel');
      replace(found, h('p', null, 'Command to ', h('a', { href: `#/devices/${encodeURIComponent(c.device)}` }, c.device), `: ${c.name}, ${c.status}`),
        h('pre', { class: 'code' }, pretty(c)), can('operate') ? cancel : null);
      return;
    } catch (err) {
      if (err.status !== 404 && err.status !== 400) { lookErr.show(err); return; }
    }
    try {
      await api('GET', `/api/v1/command-batches/${encodeURIComponent(id)}`);
      remember(id);
      replace(found, h('p', null, 'Batch added to the list above.'));
      await refreshBatches();
    } catch (err) { lookErr.show(err); }
  });

  const breakersBox = h('div');
  async function loadBreakers() {
    const b = await api('GET', '/api/v1/commands/breakers');
    replace(breakersBox,
      table('Breakers by class', ['Class', 'State', 'Consecutive failures'],
        Object.entries(b.classes || {}).map(([k, v]) => [k, v.state, String(v.consecutive_failures ?? '')])),
      table('Device breakers', ['Device', 'Class', 'State'],
        (b.devices || []).map((d) => [d.device, d.priority, d.state]), 'No device breaker is open.'));
  }

  replace(main, h('h1', null, 'Commands and batches'),
    can('operate') ? section('Send to many devices', form) : null,
    section('Batches', batchErr, batchBox, pager.el),
    section('Look up', look, lookErr, found),
    section('Circuit breakers', breakersBox),
    h('p', { class: 'muted' }, 'Commands of one device are on its page (Devices).'));
  await Promise.all([refreshBatches(), loadBreakers().catch((err) => toast(err.message, 'error'))]);
  ctx.every(3000, () => { refreshBatches(); });
}
