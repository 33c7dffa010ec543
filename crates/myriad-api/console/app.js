// The console's entry: hash routing, the session check, the header, page lifecycle (each
// page's live streams and timers end when the page changes).
import { api, onUnauthorized } from './js/api.js';
import { session } from './js/session.js';
import { liveEvents } from './js/events.js';
import { h, replace, toast } from './js/ui.js';
import * as login from './js/pages/login.js';
import * as overview from './js/pages/overview.js';
import * as devices from './js/pages/devices.js';
import * as device from './js/pages/device.js';
import * as commands from './js/pages/commands.js';
import * as rollouts from './js/pages/rollouts.js';
import * as rollout from './js/pages/rollout.js';
import * as retained from './js/pages/retained.js';
import * as apps from './js/pages/apps.js';
import * as users from './js/pages/users.js';
import * as audit from './js/pages/audit.js';
import * as account from './js/pages/account.js';

const ROUTES = [
  [/^\/overview$/, overview, 'Overview'],
  [/^\/devices$/, devices, 'Devices'],
  [/^\/devices\/(.+)$/, device, 'Device'],
  [/^\/commands$/, commands, 'Commands and batches'],
  [/^\/rollouts$/, rollouts, 'OTA rollouts'],
  [/^\/rollouts\/(.+)$/, rollout, 'Rollout'],
  [/^\/retained$/, retained, 'Retained messages'],
  [/^\/apps$/, apps, 'Apps and ACLs'],
  [/^\/users$/, users, 'Users'],
  [/^\/audit$/, audit, 'Audit log'],
  [/^\/account$/, account, 'My account'],
];

const main = document.getElementById('main');
let cleanups = [];
let wanted = '#/overview';

function endPage() {
  for (const fn of cleanups) {
    try { fn(); } catch (_) { /* already gone */ }
  }
  cleanups = [];
}

function context() {
  return {
    onCleanup(fn) { cleanups.push(fn); },
    live(opts) { cleanups.push(liveEvents(opts)); },
    every(ms, fn) { const t = setInterval(fn, ms); cleanups.push(() => clearInterval(t)); },
  };
}

function showHeader() {
  const top = document.getElementById('top');
  const s = session.current;
  top.hidden = !s;
  if (!s) return;
  document.getElementById('who').textContent = `${s.username} (${s.role})`;
  for (const link of document.querySelectorAll('#nav a[data-role]')) {
    link.hidden = link.dataset.role !== s.role;
  }
  const path = location.hash.slice(1);
  for (const link of document.querySelectorAll('#nav a')) {
    const target = link.getAttribute('href').slice(1);
    if (path === target || path.startsWith(`${target}/`)) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

async function route() {
  endPage();
  // Notes about the last page go with it; errors stay until dismissed.
  for (const note of document.querySelectorAll('#toasts .toast:not(.error)')) note.remove();
  const path = location.hash.replace(/^#/, '') || '/overview';
  if (path === '/login' || !session.current) {
    if (path !== '/login') wanted = `#${path}`;
    session.current = null;
    showHeader();
    const done = () => {
      const target = wanted === '#/login' ? '#/overview' : wanted;
      if (location.hash === target) route(); else location.hash = target;
    };
    await login.render(main, context(), { done });
    return;
  }
  showHeader();
  for (const [pattern, page, title] of ROUTES) {
    const m = path.match(pattern);
    if (m) {
      const params = m.slice(1).map(decodeURIComponent);
      document.title = `${title} · Myriad`;
      // Each page draws into its own element: a page still loading when the user moves on
      // draws into a detached one.
      const view = h('div', { class: 'view' });
      replace(main, view);
      try {
        await page.render(view, context(), ...params);
      } catch (err) {
        // The page could not load what it shows: say why, as the API words it.
        replace(view, h('h1', null, title), h('p', { class: 'error', role: 'alert' }, err.message || String(err)));
      }
      main.focus({ preventScroll: true });
      return;
    }
  }
  replace(main, h('h1', null, 'Not found'), h('p', null, 'No such page. ', h('a', { href: '#/overview' }, 'Overview')));
}

onUnauthorized(() => {
  if (!session.current) return;
  session.current = null;
  toast('Your session ended: log in again.', 'error');
  wanted = location.hash || '#/overview';
  location.hash = '#/login';
});

document.getElementById('logout').addEventListener('click', async () => {
  try { await api('POST', '/api/v1/logout'); } catch (_) { /* gone already */ }
  session.current = null;
  location.hash = '#/login';
});

window.addEventListener('hashchange', route);

(async () => {
  try {
    session.current = await api('GET', '/api/v1/session', undefined, { quiet: true });
  } catch (_) {
    session.current = null;
  }
  await route();
})();
