// OTA rollouts: every rollout with its state and per-state counts (live), create one, and the
// firmware artifacts (upload with progress, delete).
import { api, upload, withQuery } from '../api.js';
import { can } from '../session.js';
import {
  arrayPager, busy, confirmAction, errorLine, field, fmtTime, h, list, replace, section, table, toast,
} from '../ui.js';

/** "SUCCEEDED: 3, FAILED: 1" without the zeros. */
export function countsText(counts) {
  return Object.entries(counts || {}).filter(([, n]) => n > 0).map(([s, n]) => `${s}: ${n}`).join(', ') || '—';
}

export async function render(main, ctx) {
  const box = h('div');
  const err = errorLine();
  const rollouts = new Map();
  const pager = arrayPager('Rollouts', (items) => replace(box, table('Rollouts',
    ['Rollout', 'Name', 'Artifact', 'State', 'Devices', 'Waves started', 'Counts', 'Created'],
    items.map((r) => [h('a', { href: `#/rollouts/${encodeURIComponent(r.id)}` }, r.id), r.name, r.artifact,
      h('span', { class: `status ${r.status}`, dataset: { rollout: r.id } }, r.status), String(r.devices), String(r.waves_started),
      countsText(r.counts), fmtTime(r.created_at)]), 'No rollouts yet.')));
  async function loadRollouts() {
    const r = await api('GET', '/api/v1/ota/rollouts');
    rollouts.clear();
    for (const x of r.rollouts) rollouts.set(x.id, x);
    pager.set([...rollouts.values()].reverse());
  }

  const artBox = h('div');
  let artifacts = [];
  const artPager = arrayPager('Artifacts', (items) => {
    const headers = ['Artifact', 'Version', 'Hardware', 'Size', 'Uploaded'];
    if (can('operate')) headers.push('');
    replace(artBox, table('Artifacts', headers, items.map((a) => {
      const row = [h('code', null, a.id), a.version, a.hardware_type, `${a.size.toLocaleString()} B`, fmtTime(a.created_at)];
      if (can('operate')) {
        const del = h('button', {
          type: 'button',
          class: 'danger',
          onclick: async () => {
            if (!await confirmAction(`Delete artifact ${a.version} (${a.hardware_type})?`, 'Delete')) return;
            await busy(del, async () => { await api('DELETE', `/api/v1/ota/artifacts/${a.id}`); await loadArtifacts(); });
          },
        }, 'Delete');
        row.push(del);
      }
      return row;
    }), 'No artifacts uploaded.'));
  });
  const artSelect = h('select', { id: 'rollout-artifact', name: 'artifact', required: true });
  async function loadArtifacts() {
    artifacts = (await api('GET', '/api/v1/ota/artifacts')).artifacts;
    artPager.set(artifacts);
    replace(artSelect, artifacts.map((a) => h('option', { value: a.id }, `${a.version} · ${a.hardware_type} · ${a.id}`)));
  }

  const createErr = errorLine();
  const create = h('button', { type: 'submit', class: 'primary' }, 'Create rollout');
  const form = h('form', { class: 'grid-form', 'aria-label': 'Create a rollout' },
    field('Name', { name: 'name' }),
    h('div', { class: 'field' }, h('label', { for: 'rollout-artifact' }, 'Artifact'), artSelect),
    field('Target', { name: 'target', type: 'select', options: [['devices', 'devices (comma separated)'], ['group', 'group'], ['attribute', 'attribute key=value']] }),
    field('Devices, group or key=value', { name: 'target_value', required: true }),
    field('Waves (percent of devices per wave, comma separated)', { name: 'waves', value: '100' }),
    field('Advance after (percent of a wave finished)', { name: 'advance_percent', type: 'number', min: 1, max: 100, value: '100' }),
    field('Retries after a failure', { name: 'max_retries', type: 'number', min: 0, max: 10, value: '0' }),
    createErr, create);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = new FormData(form);
    const value = d.get('target_value').trim();
    let targets;
    if (d.get('target') === 'devices') targets = { devices: list(value) };
    else if (d.get('target') === 'group') targets = { group: value };
    else {
      const at = value.indexOf('=');
      targets = { attribute: { key: value.slice(0, at < 0 ? value.length : at), value: at < 0 ? '' : value.slice(at + 1) } };
    }
    const body = {
      name: d.get('name'), artifact: d.get('artifact'), targets,
      waves: { percent: list(d.get('waves')).map(Number) },
      advance_percent: Number(d.get('advance_percent')), max_retries: Number(d.get('max_retries')),
    };
    busy(create, async () => {
      const r = await api('POST', '/api/v1/ota/rollouts', body);
      toast(`Rollout ${r.id} created`);
      location.hash = `#/rollouts/${encodeURIComponent(r.id)}`;
    }, createErr);
  });

  const upErr = errorLine();
  const progress = h('progress', { max: 100, value: 0, 'aria-label': 'Upload progress', hidden: true });
  const upBtn = h('button', { type: 'submit', class: 'primary' }, 'Upload');
  const upForm = h('form', { class: 'grid-form', 'aria-label': 'Upload an artifact' },
    field('Image file', { name: 'file', type: 'file', required: true }),
    field('Version', { name: 'version', required: true }),
    field('Hardware type', { name: 'hardware_type', required: true }),
    field('Notes', { name: 'notes' }),
    upErr, progress, upBtn);
  upForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = new FormData(upForm);
    progress.hidden = false;
    busy(upBtn, async () => {
      const path = withQuery('/api/v1/ota/artifacts', { version: d.get('version'), hardware_type: d.get('hardware_type'), notes: d.get('notes') });
      await upload('POST', path, d.get('file'), 'application/octet-stream', (loaded, total) => {
        progress.value = total ? Math.round((loaded / total) * 100) : 0;
      });
      upForm.reset();
      await loadArtifacts();
    }, upErr);
  });

  replace(main, h('h1', null, 'OTA rollouts'),
    section('Rollouts', err, box, pager.el),
    can('operate') ? section('Create a rollout', form) : null,
    section('Artifacts', artBox, artPager.el),
    can('operate') ? section('Upload an artifact', upForm) : null);
  await Promise.all([loadRollouts().catch((e) => err.show(e)), loadArtifacts().catch((e) => err.show(e))]);
  ctx.live({
    types: ['rollout'],
    handlers: {
      rollout(ev) {
        const r = rollouts.get(ev.id);
        if (!r) { loadRollouts().catch(() => {}); return; }
        r.status = ev.state;
        r.counts = ev.counts;
        pager.set(pager.items);
      },
      resync: () => loadRollouts().catch(() => {}),
    },
    poll: () => loadRollouts().catch(() => {}),
  });
}
