// The API client: same-origin fetch with the session cookie, the CSRF header on every
// state-changing request, errors as the API words them ({"status", "message"}).
import { csrf } from './session.js';

/** An API error: the HTTP status and the API's own message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let unauthorized = () => {};

/** Sets what happens on a 401 (the app sends the user to the login page). */
export function onUnauthorized(fn) {
  unauthorized = fn;
}

function headersFor(method, extra) {
  const headers = { Accept: 'application/json', ...extra };
  if (method !== 'GET' && method !== 'HEAD' && csrf()) headers['X-CSRF-Token'] = csrf();
  return headers;
}

async function errorOf(resp) {
  const text = await resp.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.message === 'string') return new ApiError(resp.status, body.message);
  } catch (_) { /* not JSON */ }
  return new ApiError(resp.status, text.trim() || `${resp.status} ${resp.statusText}`);
}

/**
 * Calls the API: api('GET', '/api/v1/devices', undefined) → parsed JSON (null for 204).
 * Throws ApiError. opts.quiet: no redirect to the login page on 401.
 */
export async function api(method, path, body, opts = {}) {
  const extra = {};
  let payload;
  if (body !== undefined) {
    extra['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const resp = await fetch(path, {
    method, headers: headersFor(method, extra), body: payload, credentials: 'same-origin',
  });
  if (!resp.ok) {
    const err = await errorOf(resp);
    if (resp.status === 401 && !opts.quiet) unauthorized();
    throw err;
  }
  if (resp.status === 204) return null;
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

/** Builds a path with a query string from the non-empty values of `params`. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

/**
 * Uploads a file with progress (XMLHttpRequest: fetch reports no upload progress).
 * onProgress(loaded, total). Resolves the parsed JSON answer; rejects ApiError.
 */
export function upload(method, path, file, contentType, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, path);
    xhr.withCredentials = true;
    const headers = headersFor(method, { 'Content-Type': contentType });
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    xhr.upload.addEventListener('progress', (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size));
    xhr.addEventListener('load', () => {
      let body = null;
      try { body = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch (_) { body = null; }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
      } else {
        if (xhr.status === 401) unauthorized();
        const message = body && body.message ? body.message : `${xhr.status} ${xhr.statusText}`;
        reject(new ApiError(xhr.status, message));
      }
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'network error during the upload')));
    xhr.send(file);
  });
}
