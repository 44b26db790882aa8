// api.js — the fetch wrapper every view uses (bearer token from
// sessionStorage, JSON errors turned into ApiError, a 401 sends the user back
// to the login form) and a Server-Sent Events reader over fetch (EventSource
// cannot send an Authorization header).

const TOKEN_KEY = 'reportd.token';

export class ApiError extends Error {
  constructor(status, detail, code, retryAfter) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.detail = detail || '';
    this.code = code || '';
    this.retryAfter = retryAfter;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// The shell registers what to do on a 401 (show the login form); the views
// can wait for the user to sign in again with `whenAuthed()`.
let unauthorizedHandler = () => {};
let authWaiters = [];

export function onUnauthorized(fn) {
  unauthorizedHandler = fn;
}

/** Resolves once a token is present again (immediately when there is one). */
export function whenAuthed() {
  if (getToken()) return Promise.resolve();
  return new Promise((resolve) => authWaiters.push(resolve));
}

/** Called by the shell after a successful login. */
export function authed() {
  const waiters = authWaiters;
  authWaiters = [];
  for (const w of waiters) w();
}

function retryAfterOf(res) {
  const v = res.headers.get('Retry-After');
  const n = v == null ? NaN : Number(v);
  return Number.isFinite(n) && n >= 0 ? n : undefined;
}

async function errorOf(res) {
  let detail = '';
  let code = '';
  try {
    const body = await res.json();
    detail = typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail ?? '');
    code = body.code || '';
  } catch {
    /* not JSON */
  }
  return new ApiError(res.status, detail, code, retryAfterOf(res));
}

function handle401(res, hadToken) {
  if (res.status === 401 && hadToken) {
    setToken(null);
    unauthorizedHandler();
  }
}

/**
 * Send a request with the tab's token (when `auth`) and `accept`; resolves
 * to the response when it is 2xx, else throws its ApiError (a 401 also
 * returns to the login form).
 */
async function send(path, { method = 'GET', json, body, headers = {}, auth = true, signal, accept }) {
  const h = new Headers(headers);
  const token = auth ? getToken() : null;
  if (token) h.set('Authorization', `Bearer ${token}`);
  if (json !== undefined) {
    h.set('Content-Type', 'application/json');
    body = JSON.stringify(json);
  }
  h.set('Accept', accept);
  let res;
  try {
    res = await fetch(path, { method, headers: h, body, signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, '', 'network');
  }
  if (!res.ok) {
    handle401(res, !!token);
    throw await errorOf(res);
  }
  return res;
}

/**
 * Send a request to the service. `json` becomes a JSON body, `body` is sent
 * as is (FormData). Answers the parsed JSON (or null for 204), throws
 * ApiError otherwise; network failures throw ApiError with status 0.
 */
export async function request(path, options = {}) {
  const res = await send(path, { ...options, accept: 'application/json' });
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

/**
 * Open an event stream with fetch and call `onEvent({event, id, data})` for
 * each event (`data` parsed as JSON when it is JSON). Resolves when the
 * server closes the stream. Throws ApiError when the answer is not 200.
 */
export async function stream(path, { method = 'GET', json, headers = {}, signal, onEvent }) {
  const res = await send(path, { method, json, headers, signal, accept: 'text/event-stream' });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let ev = { event: 'message', data: [], id: null };
  const dispatch = () => {
    if (ev.data.length) {
      const raw = ev.data.join('\n');
      let data = raw;
      try {
        data = JSON.parse(raw);
      } catch {
        /* keep the text */
      }
      onEvent({ event: ev.event, id: ev.id, data });
    }
    ev = { event: 'message', data: [], id: null };
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    // Lines end with \r\n, \n or \r; keep an incomplete last line (and a
    // lone trailing \r, which may be the first half of \r\n) in the buffer.
    let m;
    const re = /\r\n|\n|\r(?!$)/g;
    let start = 0;
    while ((m = re.exec(buf)) !== null) {
      const line = buf.slice(start, m.index);
      start = m.index + m[0].length;
      if (line === '') {
        dispatch();
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? '' : line.slice(colon + 1);
      if (val.startsWith(' ')) val = val.slice(1);
      if (field === 'event') ev.event = val;
      else if (field === 'data') ev.data.push(val);
      else if (field === 'id') ev.id = val;
    }
    buf = buf.slice(start);
  }
  if (buf.trim()) {
    // A last event without its blank line: parse what is there.
    for (const line of buf.split(/\r\n|\n|\r/)) {
      const colon = line.indexOf(':');
      if (colon < 0) continue;
      const field = line.slice(0, colon);
      let val = line.slice(colon + 1);
      if (val.startsWith(' ')) val = val.slice(1);
      if (field === 'event') ev.event = val;
      else if (field === 'data') ev.data.push(val);
      else if (field === 'id') ev.id = val;
    }
  }
  dispatch();
}

/** Sleep, resolving early when `signal` aborts. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const id = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => {
      clearTimeout(id);
      resolve();
    });
  });
}
