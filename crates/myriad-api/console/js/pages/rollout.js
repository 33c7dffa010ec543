// One rollout: state, waves, per-state counts (live), pause / resume / cancel, its devices by
// state, a page at a time.
import { api, withQuery } from '../api.js';
import { can } from '../session.js';
import { busy, coalesce, confirmAction, cursorPager, errorLine, field, fmtTime, h, replace, section, table, toast } from '../ui.js';

const DONE = new Set(['COMPLETED', 'ABORTED', 'CANCELED']);
const PAGE = 25;

export async function render(main, ctx, id) {
  const base = `/api/v1/ota/rollouts/${encodeURIComponent(id)}`;
  let r = await api('GET', base);
  const head = h('div');
  const countsBox = h('div', { id: 'rollout-counts' });
  const err = errorLine();

  function action(label, verb, question, danger) {
    const b = h('button', {
      type: 'button',
      class: danger ? 'danger' : null,
      onclick: async () => {
        if (question && !await confirmAction(question, label)) return;
        await busy(b, async () => {
          r = await api('POST', `${base}/${verb}`);
          toast(`Rollout ${r.status.toLowerCase()}`);
          draw();
          devPager.reload();
        }, err);
      },
    }, label);
    return b;
  }

  function draw() {
    const buttons = [];
    if (can('operate') && !DONE.has(r.status)) {
      if (r.status === 'PAUSED') buttons.push(action('Resume', 'resume'));
      else buttons.push(action('Pause', 'pause', `Pause rollout ${r.name || r.id}? No new device is notified until it resumes.`));
      buttons.push(action('Cancel rollout', 'cancel', `Cancel rollout ${r.name || r.id}? Devices not yet installing stop.`, true));
    }
    replace(head,
      h('h1', null, 'Rollout ', h('code', null, r.name || r.id), ' ', h('span', { class: `status ${r.status}`, id: 'rollout-status' }, r.status)),
      h('dl', { class: 'facts' },
        h('dt', null, 'Id'), h('dd', null, r.id),
        h('dt', null, 'Artifact'), h('dd', null, r.artifact),
        h('dt', null, 'Targets'), h('dd', null, JSON.stringify(r.targets)),
        h('dt', null, 'Devices'), h('dd', null, String(r.devices)),
        h('dt', null, 'Waves started'), h('dd', { id: 'rollout-waves' }, String(r.waves_started)),
        h('dt', null, 'Created'), h('dd', null, fmtTime(r.created_at)),
        h('dt', null, 'Updated'), h('dd', null, fmtTime(r.updated_at))),
      h('div', { class: 'actions' }, buttons), err);
    replace(countsBox, h('dl', { class: 'counts' }, Object.entries(r.counts || {}).map(([s, n]) => h('div', { class: n ? null : 'zero' },
      h('dt', null, s), h('dd', { dataset: { state: s } }, String(n))))));
  }

  const devBox = h('div');
  const filter = h('form', { class: 'filters', 'aria-label': 'Filter devices by state' },
    field('State', { name: 'state', type: 'select', options: [['', 'any'], ...Object.keys(r.counts || {}).map((s) => [s, s])] }),
    h('button', { type: 'submit' }, 'Show'));
  const devPager = cursorPager('Rollout devices', async (offset) => {
    const state = new FormData(filter).get('state');
    const page = await api('GET', withQuery(`${base}/devices`, { state, offset: offset || 0, limit: PAGE }));
    replace(devBox, table('Devices of the rollout', ['Device', 'State', 'Attempts', 'Since', 'Progress', 'Reason'],
      page.devices.map((d) => [h('a', { href: `#/devices/${encodeURIComponent(d.device)}` }, d.device), d.state, String(d.attempts),
        fmtTime(d.since), d.total ? `${Math.round(((d.done || 0) / d.total) * 100)}%` : '—', d.reason || '']), 'No devices.'));
    const next = (offset || 0) + PAGE;
    return { next: next < page.total ? next : null };
  });
  filter.addEventListener('submit', (e) => { e.preventDefault(); devPager.first(); });

  replace(main, head, section('Devices per state', countsBox), section('Devices', filter, devBox, devPager.el));
  draw();
  await devPager.first();
  // One fetch at a time (events come in bursts): a slow answer never draws over a newer one.
  const refetch = coalesce(async () => { r = await api('GET', base); draw(); devPager.reload(); });
  ctx.live({
    types: ['rollout'],
    handlers: {
      rollout(ev) {
        if (ev.id !== r.id) return;
        // Waves and per-device rows come with the full record.
        refetch().catch(() => {});
      },
      resync: refetch,
    },
    poll: refetch,
  });
}
