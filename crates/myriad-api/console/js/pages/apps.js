// Application clients and their ACLs: list, create (admin), change publish/subscribe filters,
// delete.
import { api } from '../api.js';
import { can } from '../session.js';
import {
  arrayPager, busy, confirmAction, errorLine, field, fmtTime, h, list, randomPassword, replace, section,
  showSecret, table, toast,
} from '../ui.js';

export async function render(main) {
  const box = h('div');
  const err = errorLine();
  const editBox = h('div');
  const pager = arrayPager('Apps', (items) => {
    const headers = ['App', 'Name', 'Publish', 'Subscribe', 'Admin', 'Created'];
    if (can('admin')) headers.push('');
    replace(box, table('App clients', headers, items.map((a) => {
      const row = [h('code', null, a.id), a.name, a.publish.join(', ') || '—', a.subscribe.join(', ') || '—',
        a.admin ? 'yes' : 'no', fmtTime(a.created_at)];
      if (can('admin')) {
        const edit = h('button', { type: 'button', onclick: () => editForm(a) }, 'Edit ACLs');
        const del = h('button', {
          type: 'button',
          class: 'danger',
          onclick: async () => {
            if (!await confirmAction(`Delete app client ${a.id}? Its connections close.`, 'Delete')) return;
            await busy(del, async () => { await api('DELETE', `/api/v1/apps/${encodeURIComponent(a.id)}`); toast(`${a.id} deleted`); await load(); }, err);
          },
        }, 'Delete');
        row.push(h('span', { class: 'row-actions' }, edit, del));
      }
      return row;
    }), 'No app clients.'));
  });
  async function load() {
    pager.set((await api('GET', '/api/v1/apps')).items);
  }

  function editForm(a) {
    const e2 = errorLine();
    const save = h('button', { type: 'submit', class: 'primary' }, 'Save ACLs');
    const form = h('form', { class: 'grid-form', 'aria-label': `ACLs of ${a.id}` },
      h('h3', null, `ACLs of ${a.id}`),
      field('Publish filters (comma separated)', { name: 'publish', value: a.publish.join(', ') }),
      field('Subscribe filters (comma separated)', { name: 'subscribe', value: a.subscribe.join(', ') }),
      field('Admin (publish and subscribe anywhere)', { name: 'admin', type: 'checkbox', checked: a.admin }),
      e2, save);
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const d = new FormData(form);
      busy(save, async () => {
        await api('PATCH', `/api/v1/apps/${encodeURIComponent(a.id)}`, {
          publish: list(d.get('publish')), subscribe: list(d.get('subscribe')), admin: !!d.get('admin'),
        });
        toast(`ACLs of ${a.id} saved; its connections were closed to take them`);
        replace(editBox);
        await load();
      }, e2);
    });
    replace(editBox, form);
    form.querySelector('input').focus();
  }

  const cErr = errorLine();
  const create = h('button', { type: 'submit', class: 'primary' }, 'Create app client');
  const form = h('form', { class: 'grid-form', 'aria-label': 'Create an app client' },
    field('App id', { name: 'id', required: true }),
    field('Name', { name: 'name' }),
    field('Publish filters (comma separated)', { name: 'publish' }),
    field('Subscribe filters (comma separated)', { name: 'subscribe' }),
    field('Admin', { name: 'admin', type: 'checkbox' }),
    cErr, create);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = new FormData(form);
    const password = randomPassword();
    busy(create, async () => {
      const a = await api('POST', '/api/v1/apps', {
        id: d.get('id'), name: d.get('name'), publish: list(d.get('publish')), subscribe: list(d.get('subscribe')),
        admin: !!d.get('admin'), password,
      });
      form.reset();
      await load();
      await showSecret(`Password of app:${a.id}`, password);
    }, cErr);
  });

  replace(main, h('h1', null, 'Apps and ACLs'),
    h('p', { class: 'muted' }, 'An app client logs in to MQTT as app:{id}; it may publish and subscribe only within its filters.'),
    section('App clients', err, box, pager.el, editBox),
    can('admin') ? section('Create an app client', form) : null);
  await load();
}
