// A user's API tokens (the user or an admin): list, create (secret shown once), delete.
import { api } from '../api.js';
import { arrayPager, busy, confirmAction, errorLine, field, fmtTime, h, replace, showSecret, table } from '../ui.js';

/** The token panel of `username`. */
export function tokensPanel(username) {
  const base = `/api/v1/users/${encodeURIComponent(username)}/tokens`;
  const box = h('div');
  const err = errorLine();
  const pager = arrayPager(`Tokens of ${username}`, (items) => replace(box, table(`Tokens of ${username}`,
    ['Name', 'Id', 'Created', 'Last used', ''],
    items.map((t) => {
      const del = h('button', {
        type: 'button',
        class: 'danger',
        onclick: async () => {
          if (!await confirmAction(`Delete token ${t.name}? Clients using it are refused from now on.`, 'Delete')) return;
          await busy(del, async () => { await api('DELETE', `${base}/${encodeURIComponent(t.id)}`); await load(); }, err);
        },
      }, 'Delete');
      return [t.name, h('code', null, t.id), fmtTime(t.created_ms), fmtTime(t.last_used_ms), del];
    }), 'No API tokens.')), 10);
  async function load() {
    try { pager.set((await api('GET', base)).items); } catch (e) { err.show(e); }
  }
  const create = h('button', { type: 'submit' }, 'Create token');
  const form = h('form', { class: 'filters', 'aria-label': `New token for ${username}` },
    field('Token name', { name: 'name', required: true, maxlength: 64 }), create);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    busy(create, async () => {
      const t = await api('POST', base, { name: new FormData(form).get('name') });
      form.reset();
      await load();
      await showSecret(`Token ${t.name}`, t.token, 'Shown once: copy it now. Use it as Authorization: Bearer <token>.');
    }, err);
  });
  const el = h('div', { class: 'tokens' }, err, box, pager.el, form);
  load();
  return el;
}
