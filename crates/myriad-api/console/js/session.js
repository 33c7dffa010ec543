// Who is logged in (GET /api/v1/session) and what the role may do. The server enforces every
// rule; the console only hides what the role cannot use.

/** The current session: {username, role, csrf_token, expires_ms, via} or null. */
export const session = { current: null };

/** The CSRF token to send on state-changing requests ('' for none). */
export function csrf() {
  return session.current ? session.current.csrf_token || '' : '';
}

/** The role: 'admin', 'operator', 'viewer' or '' when logged out. */
export function role() {
  return session.current ? session.current.role : '';
}

/**
 * Whether the role may do `what`:
 * 'operate' (devices, shadows, commands, OTA, retained deletes): operator and admin;
 * 'admin' (users, audit, apps and ACLs): admin only.
 */
export function can(what) {
  const r = role();
  if (what === 'operate') return r === 'operator' || r === 'admin';
  if (what === 'admin') return r === 'admin';
  return false;
}
