// DOM helpers: elements built with createElement and text nodes only (never innerHTML with
// data), dialogs for confirmation and one-time secrets, messages, time formats, pagers.

/** Builds an element: h('button', {class: 'x', onclick: fn}, 'text', child, ...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'value' || key === 'checked' || key === 'selected') {
      el[key] = value;
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

/** Appends children (nodes, strings, numbers, nested arrays; null skipped). */
export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replaces every child of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let fieldSeq = 0;

/** A labelled form field: {label, name, type, value, required, ...input attributes}. */
export function field(label, attrs = {}) {
  const id = attrs.id || `f${++fieldSeq}`;
  const control = attrs.type === 'textarea'
    ? h('textarea', { ...attrs, type: null, id })
    : attrs.type === 'select'
      ? h('select', { ...attrs, type: null, options: null, id },
        (attrs.options || []).map(([value, text]) => h('option', { value }, text)))
      : h('input', { type: 'text', ...attrs, id });
  if (attrs.type === 'select' && attrs.value !== undefined) control.value = attrs.value;
  return h('div', { class: attrs.type === 'checkbox' ? 'field check' : 'field' },
    h('label', { for: id }, label), control);
}

/** A section with a heading. */
export function section(title, ...children) {
  return h('section', { class: 'card', 'aria-label': title }, h('h2', null, title), children);
}

/** A table: headers and rows of cells (nodes or text); an empty note when no rows. */
export function table(caption, headers, rows, empty = 'Nothing here.') {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' },
    h('table', null,
      h('caption', { class: 'sr-only' }, caption),
      h('thead', null, h('tr', null, headers.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', null, rows.map((cells) => h('tr', null, cells.map((c) => h('td', null, c)))))));
}

/** An online/offline badge. */
export function badge(online) {
  return h('span', { class: online ? 'badge on' : 'badge off', dataset: { online: String(online) } },
    online ? 'online' : 'offline');
}

/** Asks with the confirmation dialog; resolves true when confirmed. */
export function confirmAction(message, confirmLabel = 'Confirm') {
  const dialog = document.getElementById('confirm-dialog');
  document.getElementById('confirm-message').textContent = message;
  document.getElementById('confirm-ok').textContent = confirmLabel;
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
    document.getElementById('confirm-cancel').focus();
  });
}

/** Shows a secret (a new password or token) once in a dialog. */
export function showSecret(title, value, note = 'Shown once: copy it now. It cannot be shown again.') {
  const dialog = document.getElementById('secret-dialog');
  document.getElementById('secret-title').textContent = title;
  document.getElementById('secret-note').textContent = note;
  document.getElementById('secret-value').textContent = value;
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener('close', resolve, { once: true }));
}

/** A transient message at the corner ('error' ones stay until dismissed). */
export function toast(message, kind = 'info') {
  const box = document.getElementById('toasts');
  const item = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : null },
    h('span', null, message),
    h('button', { type: 'button', class: 'link', 'aria-label': 'Dismiss', onclick: () => item.remove() }, '×'));
  box.append(item);
  if (kind !== 'error') setTimeout(() => item.remove(), 5000);
}

/** An inline error line (role alert) to put next to a form; `.show(err)` / `.clear()`. */
export function errorLine() {
  const el = h('p', { class: 'error', role: 'alert', hidden: true });
  el.show = (err) => { el.textContent = err && err.message ? err.message : String(err); el.hidden = false; };
  el.clear = () => { el.textContent = ''; el.hidden = true; el.classList.remove('conflict'); };
  return el;
}

/** Runs `fn` for a button: disabled while it runs, errors shown as the API words them. */
export async function busy(button, fn, errEl) {
  if (errEl) errEl.clear();
  if (button) button.disabled = true;
  try {
    return await fn();
  } catch (err) {
    if (errEl) errEl.show(err); else toast(err.message || String(err), 'error');
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

/** Unix ms as local date and time. */
export function fmtTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const d = new Date(Number(ms));
  return d.toLocaleString(undefined, { hour12: false });
}

/** How long ago unix ms was, e.g. "12 s ago". */
export function ago(ms) {
  if (!ms) return '—';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** Numbers with at most 2 decimals. */
export function num(v) {
  if (v === null || v === undefined) return '—';
  return Number.isInteger(v) ? v.toLocaleString() : Number(v).toFixed(2);
}

/** Pretty JSON. */
export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/**
 * `fn` (async, no arguments) run one call at a time: a call made while one runs (live events
 * come in bursts) makes it run once more after, and waits for that. So what `fn` draws always
 * comes from a fetch that started after the last call; overlapping fetches could answer out of
 * order and draw a stale state last.
 */
export function coalesce(fn) {
  let running = null;
  let again = false;
  return function run() {
    if (running) {
      again = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          again = false;
          await fn();
        } while (again);
      } finally {
        running = null;
      }
    })();
    return running;
  };
}

/**
 * Cursor pager: `load(cursor)` returns {rows, next}; renders Prev/Next with the cursor stack.
 * Returns {el, reload(), first()}.
 */
export function cursorPager(label, load) {
  const stack = [null];
  let next = null;
  const status = h('span', { class: 'muted' });
  const prev = h('button', { type: 'button', onclick: () => { stack.pop(); go(); } }, '← Previous');
  const nextBtn = h('button', { type: 'button', onclick: () => { stack.push(next); go(); } }, 'Next →');
  const el = h('nav', { class: 'pager', 'aria-label': `${label} pages` }, prev, status, nextBtn);
  async function loadOnce() {
    prev.disabled = true; nextBtn.disabled = true;
    const result = await load(stack[stack.length - 1]);
    next = result ? result.next : null;
    prev.disabled = stack.length <= 1;
    nextBtn.disabled = !next;
    status.textContent = `Page ${stack.length}`;
  }
  const go = coalesce(loadOnce);
  return { el, reload: go, first: () => { stack.length = 1; return go(); } };
}

/**
 * Pager over an array already in memory: `render(slice)` draws one page.
 * Returns {el, set(items), page}.
 */
export function arrayPager(label, render, size = 20) {
  let items = [];
  let page = 0;
  const status = h('span', { class: 'muted' });
  const prev = h('button', { type: 'button', onclick: () => { page -= 1; draw(); } }, '← Previous');
  const nextBtn = h('button', { type: 'button', onclick: () => { page += 1; draw(); } }, 'Next →');
  const el = h('nav', { class: 'pager', 'aria-label': `${label} pages` }, prev, status, nextBtn);
  function draw() {
    const pages = Math.max(1, Math.ceil(items.length / size));
    page = Math.min(Math.max(0, page), pages - 1);
    prev.disabled = page === 0;
    nextBtn.disabled = page >= pages - 1;
    status.textContent = `Page ${page + 1} of ${pages} (${items.length})`;
    render(items.slice(page * size, (page + 1) * size));
  }
  return { el, set(list) { items = list; draw(); }, get items() { return items; } };
}

/** A random password of 24 URL-safe characters (crypto.getRandomValues). */
export function randomPassword() {
  const alphabet = 'ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789-_';
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('');
}

/** Parses "a, b ,c" into ['a','b','c']. */
export function list(text) {
  return String(text || '').split(',').map((s) => s.trim()).filter(Boolean);
}
