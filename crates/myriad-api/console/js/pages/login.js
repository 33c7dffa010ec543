// Login: POST /api/v1/login with the form; the answer sets the session cookie and gives the
// CSRF token. Wrong name or password and throttling are shown as the API words them.
import { api } from '../api.js';
import { session } from '../session.js';
import { busy, errorLine, field, h, replace } from '../ui.js';

export async function render(main, _ctx, { done }) {
  const err = errorLine();
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Log in');
  const form = h('form', { class: 'login card', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Myriad console'),
    field('Username', { name: 'username', autocomplete: 'username', required: true, autofocus: true }),
    field('Password', { name: 'password', type: 'password', autocomplete: 'current-password', required: true }),
    err, submit);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const data = new FormData(form);
    busy(submit, async () => {
      await api('POST', '/api/v1/login', { username: data.get('username'), password: data.get('password') }, { quiet: true });
      session.current = await api('GET', '/api/v1/session', undefined, { quiet: true });
      done();
    }, err);
  });
  replace(main, form);
  form.querySelector('input').focus();
}
