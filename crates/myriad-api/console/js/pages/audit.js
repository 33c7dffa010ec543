// Audit log (admin): every state-changing request, newest first, a page at a time, by actor.
import { api, withQuery } from '../api.js';
import { cursorPager, errorLine, field, fmtTime, h, replace, section, table } from '../ui.js';

export async function render(main) {
  const box = h('div');
  const err = errorLine();
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter the audit log' },
    field('Actor', { name: 'actor', type: 'search' }),
    field('Per page', { name: 'limit', type: 'select', options: [['50', '50'], ['100', '100'], ['200', '200']], value: '50' }),
    h('button', { type: 'submit' }, 'Show'));
  const pager = cursorPager('Audit log', async (before) => {
    err.clear();
    const d = new FormData(form);
    try {
      const page = await api('GET', withQuery('/api/v1/audit', { actor: d.get('actor'), limit: d.get('limit'), before }));
      replace(box, table('Audit log', ['#', 'When', 'Actor', 'Via', 'Role', 'Request', 'Status', 'From'],
        page.items.map((a) => [String(a.seq), fmtTime(a.at_ms), a.actor, a.via, a.role || '—',
          h('code', null, `${a.method} ${a.path}`), h('span', { class: a.status >= 400 ? 'status failed' : 'status succeeded' }, String(a.status)),
          a.remote || '—']), 'No entries.'));
      return page;
    } catch (e) { err.show(e); return null; }
  });
  form.addEventListener('submit', (e) => { e.preventDefault(); pager.first(); });
  replace(main, h('h1', null, 'Audit log'), section('State-changing requests, newest first', form, err, box, pager.el));
  await pager.first();
}
