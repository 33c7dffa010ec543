// My account (every role): change my password, my API tokens.
import { api } from '../api.js';
import { session } from '../session.js';
import { busy, errorLine, field, h, replace, section, toast } from '../ui.js';
import { tokensPanel } from './tokens.js';

export async function render(main) {
  const me = session.current;
  const err = errorLine();
  const save = h('button', { type: 'submit', class: 'primary' }, 'Change password');
  const form = h('form', { class: 'grid-form', 'aria-label': 'Change my password' },
    field('Current password', { name: 'current_password', type: 'password', autocomplete: 'current-password', required: true }),
    field('New password (8 to 256 bytes)', { name: 'password', type: 'password', autocomplete: 'new-password', required: true, minlength: 8 }),
    err, save);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const d = new FormData(form);
    busy(save, async () => {
      await api('PUT', `/api/v1/users/${encodeURIComponent(me.username)}/password`,
        { current_password: d.get('current_password'), password: d.get('password') });
      form.reset();
      toast('Password changed; other sessions were ended');
    }, err);
  });
  const canSelf = me.via === 'session' || me.via === 'token';
  replace(main, h('h1', null, 'My account'),
    h('p', null, `Logged in as ${me.username}, role ${me.role}.`),
    canSelf ? section('Password', form) : h('p', { class: 'muted' }, 'The bootstrap token has no password or tokens.'),
    canSelf ? section('My API tokens', tokensPanel(me.username)) : null);
}
