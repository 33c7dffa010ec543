// Devices: search (id prefix, name, group, attribute), enabled and online filters, cursor
// pages, live online badges, create, enable/disable, kick, rotate credentials, delete, and
// bulk import with an upload progress bar and the per-row error report.
import { api, upload, withQuery } from '../api.js';
import { can } from '../session.js';
import {
  badge, busy, confirmAction, cursorPager, errorLine, field, h, list, randomPassword, replace,
  section, showSecret, table, toast,
} from '../ui.js';

/** Asks the presence of `ids` (8 at a time) and calls back each record. */
async function presenceOf(ids, each) {
  const queue = [...ids];
  const worker = async () => {
    while (queue.length) {
      const id = queue.shift();
      try { each(id, await api('GET', `/api/v1/devices/${encodeURIComponent(id)}/presence`)); } catch (_) { /* gone */ }
    }
  };
  await Promise.all(Array.from({ length: Math.min(8, ids.length) }, worker));
}

/** The row actions of one device (only for roles that may use them). */
export function deviceActions(device, changed) {
  if (!can('operate')) return [];
  const path = `/api/v1/devices/${encodeURIComponent(device.id)}`;
  const toggle = h('button', {
    type: 'button',
    onclick: () => busy(toggle, async () => {
      await api('PATCH', path, { enabled: !device.enabled });
      toast(`${device.id} ${device.enabled ? 'disabled' : 'enabled'}`);
      changed();
    }),
  }, device.enabled ? 'Disable' : 'Enable');
  const kick = h('button', {
    type: 'button',
    onclick: async () => {
      if (!await confirmAction(`Disconnect ${device.id}? It may connect again.`, 'Kick')) return;
      await busy(kick, async () => {
        const r = await api('POST', `${path}/disconnect`);
        toast(r && r.disconnected ? `${device.id} disconnected` : `${device.id} was not connected`);
      });
    },
  }, 'Kick');
  const rotate = h('button', {
    type: 'button',
    onclick: async () => {
      if (!await confirmAction(`Set a new password for ${device.id}? The old one stops working.`, 'Rotate')) return;
      const password = randomPassword();
      await busy(rotate, async () => {
        await api('PUT', `${path}/password`, { password });
        await showSecret(`New password of ${device.id}`, password);
      });
    },
  }, 'Rotate credentials');
  const del = h('button', {
    type: 'button',
    class: 'danger',
    onclick: async () => {
      if (!await confirmAction(`Delete device ${device.id}? Its shadow, session and commands go too.`, 'Delete')) return;
      await busy(del, async () => {
        await api('DELETE', path);
        toast(`${device.id} deleted`);
        changed(true);
      });
    },
  }, 'Delete');
  return h('span', { class: 'row-actions' }, toggle, kick, rotate, del);
}

function createForm(created) {
  const err = errorLine();
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Create device');
  const form = h('form', { class: 'grid-form', 'aria-label': 'Create a device' },
    field('Device id', { name: 'id', required: true, maxlength: 128 }),
    field('Name', { name: 'name' }),
    field('Groups (comma separated)', { name: 'groups' }),
    field('Attributes (key=value, comma separated)', { name: 'attributes' }),
    field('Password (empty: generate one)', { name: 'password', type: 'password', autocomplete: 'new-password' }),
    err, submit);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = new FormData(form);
    const attributes = {};
    for (const pair of list(d.get('attributes'))) {
      const at = pair.indexOf('=');
      if (at > 0) attributes[pair.slice(0, at)] = pair.slice(at + 1);
    }
    const password = d.get('password') || randomPassword();
    busy(submit, async () => {
      const dev = await api('POST', '/api/v1/devices', {
        id: d.get('id'), name: d.get('name'), groups: list(d.get('groups')), attributes, password,
      });
      form.reset();
      if (!d.get('password')) await showSecret(`Password of ${dev.id}`, password);
      else toast(`${dev.id} created`);
      created(dev);
    }, err);
  });
  return form;
}

function importForm(done) {
  const err = errorLine();
  const progress = h('progress', { max: 100, value: 0, 'aria-label': 'Upload progress', hidden: true });
  const progressText = h('span', { class: 'muted', 'aria-live': 'polite' });
  const report = h('div', { class: 'import-report' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Import');
  const form = h('form', { class: 'grid-form', 'aria-label': 'Bulk import' },
    field('File (CSV with a header, or JSON lines)', { name: 'file', type: 'file', accept: '.csv,.jsonl,.ndjson,.json,text/csv', required: true }),
    field('Format', { name: 'format', type: 'select', options: [['', 'by file name'], ['csv', 'CSV'], ['jsonl', 'JSON lines']] }),
    field('Update existing devices (upsert)', { name: 'upsert', type: 'checkbox' }),
    err, h('div', { class: 'progress-row' }, progress, progressText), submit, report);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = new FormData(form);
    const file = d.get('file');
    if (!file || !file.name) return;
    const format = d.get('format') || (/\.csv$/i.test(file.name) ? 'csv' : 'jsonl');
    progress.hidden = false;
    progress.value = 0;
    replace(report);
    busy(submit, async () => {
      const path = withQuery('/api/v1/devices/import', { format, upsert: d.get('upsert') ? 'true' : '' });
      const r = await upload('POST', path, file, format === 'csv' ? 'text/csv' : 'application/x-ndjson', (loaded, total) => {
        progress.value = total ? Math.round((loaded / total) * 100) : 0;
        progressText.textContent = `${progress.value}% of ${total.toLocaleString()} bytes sent`;
      });
      progress.value = 100;
      progressText.textContent = 'Done';
      replace(report,
        h('p', { class: 'import-summary' }, `Imported ${r.imported}, updated ${r.updated}, failed ${r.failed.length}`
          + `${r.truncated_errors ? ' (more errors not listed)' : ''}`
          + `${r.stopped_at_line ? `; stopped at line ${r.stopped_at_line}` : ''}.`),
        table('Rows that failed', ['Line', 'Device', 'Error'],
          r.failed.map((f) => [String(f.line), f.id || '', f.message]), 'No row failed.'));
      done();
    }, err);
  });
  return form;
}

export async function render(main, ctx) {
  const err = errorLine();
  const rowsBox = h('div');
  const badges = new Map();
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Search devices' },
    field('Search', { name: 'q', type: 'search', placeholder: 'id prefix, name, group or key=value' }),
    field('Search by', { name: 'by', type: 'select', options: [['id_prefix', 'id prefix'], ['name_contains', 'name contains'], ['group', 'group'], ['attribute', 'attribute key=value']] }),
    field('Enabled', { name: 'enabled', type: 'select', options: [['', 'any'], ['true', 'enabled'], ['false', 'disabled']] }),
    field('Online only', { name: 'online', type: 'checkbox' }),
    field('Per page', { name: 'limit', type: 'select', options: [['25', '25'], ['50', '50'], ['100', '100']], value: '25' }),
    h('button', { type: 'submit' }, 'Search'));

  function query() {
    const d = new FormData(filters);
    return { by: d.get('by'), q: d.get('q').trim(), enabled: d.get('enabled'), online: !!d.get('online'), limit: d.get('limit') };
  }

  async function loadPage(cursor) {
    err.clear();
    const q = query();
    try {
      let items;
      let next;
      if (q.online) {
        // Online devices come from presence (id order); the other filters apply to that page.
        const page = await api('GET', withQuery('/api/v1/presence', { after: cursor, limit: q.limit }));
        const got = await Promise.all(page.items.map((id) => api('GET', `/api/v1/devices/${encodeURIComponent(id)}`).catch(() => null)));
        items = got.filter(Boolean).filter((d) => matches(d, q));
        next = page.next;
      } else {
        const page = await api('GET', withQuery('/api/v1/devices', { [q.by]: q.q, enabled: q.enabled, limit: q.limit, after: cursor }));
        items = page.items;
        next = page.next;
      }
      draw(items);
      return { next };
    } catch (e) {
      err.show(e);
      return { next: null };
    }
  }

  function matches(d, q) {
    if (q.enabled && String(d.enabled) !== q.enabled) return false;
    if (!q.q) return true;
    if (q.by === 'id_prefix') return d.id.startsWith(q.q);
    if (q.by === 'name_contains') return d.name.includes(q.q);
    if (q.by === 'group') return d.groups.includes(q.q);
    const [k, v] = q.q.split('=');
    return d.attributes[k] === v;
  }

  function draw(items) {
    badges.clear();
    const headers = ['Device', 'Name', 'Groups', 'Enabled', 'Presence'];
    if (can('operate')) headers.push('Actions');
    replace(rowsBox, table('Devices', headers, items.map((d) => {
      const cell = h('span', { class: 'presence', dataset: { device: d.id } }, '…');
      badges.set(d.id, cell);
      const row = [h('a', { href: `#/devices/${encodeURIComponent(d.id)}` }, d.id), d.name, d.groups.join(', '),
        d.enabled ? 'yes' : 'no', cell];
      if (can('operate')) row.push(deviceActions(d, () => pager.reload()));
      return row;
    }), 'No device matches.'));
    presenceOf(items.map((d) => d.id), (id, p) => {
      const cell = badges.get(id);
      if (cell) replace(cell, badge(p.online));
    });
  }

  const pager = cursorPager('Devices', loadPage);
  filters.addEventListener('submit', (e) => { e.preventDefault(); pager.first(); });

  const counts = h('p', { class: 'muted', id: 'device-counts', 'aria-live': 'polite' });
  const loadCounts = async () => {
    try {
      const c = await api('GET', '/api/v1/presence/count');
      counts.textContent = `${c.online.toLocaleString()} online of ${c.devices.toLocaleString()} registered`;
    } catch (_) { /* the list still works */ }
  };
  const parts = [h('h1', null, 'Devices'), counts, section('Find devices', filters, err, rowsBox, pager.el)];
  if (can('operate')) {
    parts.push(section('Create a device', createForm(() => pager.reload())));
    parts.push(section('Bulk import', importForm(() => pager.reload())));
  }
  replace(main, parts);
  await Promise.all([pager.first(), loadCounts()]);
  let pending = null;
  ctx.onCleanup(() => clearTimeout(pending));
  ctx.live({
    types: ['presence'],
    handlers: {
      presence(p) {
        const cell = badges.get(p.device);
        if (cell) replace(cell, badge(p.online));
        clearTimeout(pending);
        pending = setTimeout(loadCounts, 1000);
      },
      resync: () => { pager.reload(); loadCounts(); },
    },
    poll: () => { pager.reload(); loadCounts(); },
  });
}
