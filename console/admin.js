// admin.js — the admin view: the five run-time Redis flags (effective value,
// override, toggle with confirmation, reset) and /readyz, refreshed every
// two seconds while the view is open.

import { request, ApiError } from './api.js';
import { t, onLangChange } from './i18n.js';
import { $, h, toast, confirmDialog, errorText } from './ui.js';

const FLAGS = ['REDIS_ENABLED', 'REDIS_TASK_STATUS_ENABLED', 'REDIS_CHAT_SESSION_ENABLED', 'REDIS_CACHE_ENABLED', 'REDIS_RATE_LIMIT_ENABLED'];
const FEATURES = ['task_status', 'chat_session', 'cache', 'rate_limit'];
const READY_MS = 2000;

let me = null;
let flags = null;
let ready = null;
let readyError = false;
let readyAt = null;
let timer = null;
let isActive = false;

const onOff = (v) => t(v ? 'admin.on' : 'admin.off');

function paintFlags() {
  const body = $('#admin-flags');
  if (!flags) {
    body.replaceChildren();
    return;
  }
  const names = [...FLAGS, ...Object.keys(flags.effective || {}).filter((n) => !FLAGS.includes(n))];
  body.replaceChildren(
    ...names.map((name) => {
      const eff = !!flags.effective?.[name];
      const hasOverride = flags.overrides && Object.prototype.hasOwnProperty.call(flags.overrides, name) && flags.overrides[name] !== null;
      const ov = hasOverride ? !!flags.overrides[name] : null;
      const toggleId = `flag-toggle-${name}`;
      const toggle = h('input.flag-toggle', { type: 'checkbox', id: toggleId, role: 'switch', 'aria-label': t('admin.toggle', { name }) });
      toggle.checked = eff;
      toggle.addEventListener('change', () => setFlag(name, toggle.checked, toggle));
      return h(
        'tr.flag',
        { dataset: { name } },
        h('th', { scope: 'row' }, h('code.flag-name', { text: name }), h('span.flag-desc.muted', { text: t(`flag.${name}`) })),
        h('td', {}, h('span.flag-effective.pill', { dataset: { value: String(eff) }, text: onOff(eff) })),
        h('td', {}, h('span.flag-override', { dataset: { value: ov === null ? '' : String(ov), label: `${t('admin.override')}: ` }, text: ov === null ? '—' : onOff(ov) })),
        h('td.flag-actions', {},
          toggle,
          h('button.btn.small.ghost.flag-reset', { type: 'button', disabled: !hasOverride, text: t('admin.reset'), 'aria-label': t('admin.resetAria', { name }), onclick: () => resetFlag(name) }),
        ),
      );
    }),
  );
}

async function loadFlags() {
  try {
    flags = await request('/admin/flags');
    $('#admin-error').textContent = '';
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) $('#admin-error').textContent = e.status === 403 ? t('admin.notAdmin') : errorText(e);
  }
  paintFlags();
}

async function putFlags(body, name) {
  try {
    flags = await request('/admin/flags', { method: 'PUT', json: body });
    $('#admin-error').textContent = '';
    toast(t('admin.saved', { name }), 'success');
    pollReady();
  } catch (e) {
    $('#admin-error').textContent = errorText(e);
  }
  paintFlags();
}

async function setFlag(name, value, toggle) {
  const ok = await confirmDialog(t('admin.confirmToggle', { name, value: onOff(value) }), { danger: false });
  if (!ok) {
    toggle.checked = !value;
    return;
  }
  await putFlags({ [name]: value }, name);
}

async function resetFlag(name) {
  const ok = await confirmDialog(t('admin.confirmReset', { name }), { danger: false });
  if (ok) await putFlags({ [name]: null }, name);
}

function yesNo(v) {
  return t(v ? 'common.yes' : 'common.no');
}

function paintReady() {
  const status = $('#readyz-status');
  if (!ready) {
    status.dataset.status = readyError ? 'unavailable' : '';
    status.textContent = readyError ? t('admin.unreachable') : '…';
    return;
  }
  const s = ready.status || 'unavailable';
  status.dataset.status = s;
  status.textContent = t(s === 'ready' ? 'admin.ready' : s === 'degraded' ? 'admin.degradedStatus' : 'admin.unavailable');
  const setVal = (sel, text, value) => {
    const el = $(sel);
    el.textContent = text;
    el.dataset.value = String(value);
  };
  setVal('#readyz-redis-configured', yesNo(ready.redis?.configured), !!ready.redis?.configured);
  setVal('#readyz-redis-connected', yesNo(ready.redis?.connected), !!ready.redis?.connected);
  setVal('#readyz-database', t(ready.database?.ok ? 'admin.dbOk' : 'admin.dbDown'), !!ready.database?.ok);
  $('#readyz-updated').textContent = readyAt ? readyAt.toLocaleTimeString() : '—';
  const feats = ready.features || {};
  const names = [...FEATURES.filter((n) => n in feats), ...Object.keys(feats).filter((n) => !FEATURES.includes(n))];
  $('#readyz-features').replaceChildren(
    ...names.map((name) => {
      const f = feats[name] || {};
      return h(
        'tr.feature',
        { dataset: { name } },
        h('th', { scope: 'row' }, h('span', { text: t(`feature.${name}`) }), h('code.muted.feature-key', { text: name })),
        h('td', {}, h('span.feature-backend.pill', { dataset: { value: f.backend || '' }, text: f.backend || '—' })),
        h('td', {}, h('span.feature-degraded.pill', { dataset: { value: String(!!f.degraded) }, text: yesNo(f.degraded) + (f.refusing ? ` · ${t('admin.refusing')}` : '') })),
        h('td.muted', { text: f.scope || '—' }),
      );
    }),
  );
}

async function pollReady() {
  try {
    // No auth needed; a 503 still carries the JSON body.
    const res = await fetch('/readyz', { cache: 'no-store', headers: { Accept: 'application/json' } });
    ready = await res.json();
    readyError = false;
    readyAt = new Date();
  } catch {
    ready = null;
    readyError = true;
  }
  if (isActive) paintReady();
}

/** Called by the router: start or stop the readiness polling. */
export function active(on) {
  if (on === isActive) return;
  isActive = on;
  clearInterval(timer);
  timer = null;
  if (!on) return;
  if (!me?.is_admin) {
    $('#admin-error').textContent = t('admin.notAdmin');
  } else loadFlags();
  pollReady();
  timer = setInterval(pollReady, READY_MS);
}

export function init(user) {
  me = user;
  document.addEventListener('visibilitychange', () => {
    if (isActive && !document.hidden) pollReady();
  });
  onLangChange(() => {
    paintFlags();
    paintReady();
  });
}
