// Users (admin): list a page at a time, create, change role, disable/enable, set a password,
// delete, and each user's API tokens.
import { api, withQuery } from '../api.js';
import { session } from '../session.js';
import {
  busy, confirmAction, cursorPager, errorLine, field, fmtTime, h, randomPassword, replace, section,
  showSecret, table, toast,
} from '../ui.js';
import { tokensPanel } from './tokens.js';

const ROLES = [['viewer', 'viewer'], ['operator', 'operator'], ['admin', 'admin']];

export async function render(main) {
  const box = h('div');
  const err = errorLine();
  const detail = h('div');
  const pager = cursorPager('Users', async (after) => {
    try {
      const page = await api('GET', withQuery('/api/v1/users', { after, limit: 50 }));
      replace(box, table('Users', ['User', 'Role', 'State', 'Created', 'Last login', ''],
        page.items.map((u) => row(u)), 'No users yet.'));
      return page;
    } catch (e) { err.show(e); return null; }
  });

  function row(u) {
    const path = `/api/v1/users/${encodeURIComponent(u.username)}`;
    const roleSel = h('select', { 'aria-label': `Role of ${u.username}` }, ROLES.map(([v, t]) => h('option', { value: v }, t)));
    roleSel.value = u.role;
    roleSel.addEventListener('change', async () => {
      if (!await confirmAction(`Make ${u.username} ${roleSel.value}?`, 'Change role')) { roleSel.value = u.role; return; }
      await busy(roleSel, async () => {
        await api('PATCH', path, { role: roleSel.value });
        toast(`${u.username} is now ${roleSel.value}`);
      }, err);
      pager.reload();
    });
    const toggle = h('button', {
      type: 'button',
      onclick: async () => {
        if (!u.disabled && !await confirmAction(`Disable ${u.username}? Their sessions end now.`, 'Disable')) return;
        await busy(toggle, async () => { await api('PATCH', path, { disabled: !u.disabled }); pager.reload(); }, err);
      },
    }, u.disabled ? 'Enable' : 'Disable');
    const pw = h('button', {
      type: 'button',
      onclick: async () => {
        if (!await confirmAction(`Set a new password for ${u.username}? Their sessions end now.`, 'Set password')) return;
        const password = randomPassword();
        await busy(pw, async () => {
          await api('PUT', `${path}/password`, { password });
          await showSecret(`New password of ${u.username}`, password);
        }, err);
      },
    }, 'Reset password');
    const tokens = h('button', {
      type: 'button',
      onclick: () => replace(detail, section(`API tokens of ${u.username}`, tokensPanel(u.username))),
    }, 'Tokens');
    const del = h('button', {
      type: 'button',
      class: 'danger',
      onclick: async () => {
        if (!await confirmAction(`Delete user ${u.username}? Their sessions and tokens end.`, 'Delete')) return;
        await busy(del, async () => { await api('DELETE', path); toast(`${u.username} deleted`); pager.reload(); }, err);
      },
    }, 'Delete');
    const self = session.current && session.current.username === u.username;
    if (self) roleSel.disabled = true;
    return [u.username, roleSel, u.disabled ? 'disabled' : 'enabled', fmtTime(u.created_ms), fmtTime(u.last_login_ms),
      h('span', { class: 'row-actions' }, self ? null : toggle, pw, tokens, self ? null : del)];
  }

  const cErr = errorLine();
  const create = h('button', { type: 'submit', class: 'primary' }, 'Create user');
  const form = h('form', { class: 'grid-form', 'aria-label': 'Create a user' },
    field('Username', { name: 'username', required: true, maxlength: 64, pattern: '[A-Za-z0-9._@\\-]+' }),
    field('Role', { name: 'role', type: 'select', options: ROLES }),
    field('Password (8 to 256 bytes; empty: generate one)', { name: 'password', type: 'password', autocomplete: 'new-password', minlength: 8 }),
    cErr, create);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = new FormData(form);
    const password = d.get('password') || randomPassword();
    busy(create, async () => {
      const u = await api('POST', '/api/v1/users', { username: d.get('username'), role: d.get('role'), password });
      form.reset();
      pager.reload();
      if (!d.get('password')) await showSecret(`Password of ${u.username}`, password);
      else toast(`${u.username} created`);
    }, cErr);
  });

  replace(main, h('h1', null, 'Users'), section('Users', err, box, pager.el), detail, section('Create a user', form));
  await pager.first();
}
