// app.js — the shell: login/register, the signed-in header (user, language,
// logout), hash routing between the views, and the return to the login form
// on any 401 without losing what the user typed (drafts live in
// sessionStorage, the views stay in the DOM).

import { request, setToken, getToken, onUnauthorized, authed } from './api.js';
import { t, applyI18n, setLang, getLang } from './i18n.js';
import { $, $$, toast, errorText } from './ui.js';
import * as documents from './documents.js';
import * as assistants from './assistants.js';
import * as admin from './admin.js';

const USER_KEY = 'reportd.user';
let me = null;
let started = false;

function showLogin(message) {
  $('#shell').hidden = true;
  $('#login-view').hidden = false;
  $('#login-error').textContent = message || '';
  const user = $('#login-username');
  if (!user.value && me) user.value = me.username;
  (user.value ? $('#login-password') : user).focus();
}

function showShell() {
  $('#login-view').hidden = true;
  $('#shell').hidden = false;
  $('#user-name').textContent = me.username;
  $('#nav-admin').hidden = !me.is_admin;
}

async function loadMe() {
  me = await request('/auth/me');
  const prev = sessionStorage.getItem(USER_KEY);
  sessionStorage.setItem(USER_KEY, me.id);
  return prev;
}

/** After a successful login: same user → carry on; another user → start clean. */
async function afterLogin() {
  const prevId = me?.id ?? sessionStorage.getItem(USER_KEY);
  await loadMe();
  if (started && prevId && prevId !== me.id) {
    location.reload();
    return;
  }
  $('#login-password').value = '';
  $('#login-error').textContent = '';
  showShell();
  if (!started) {
    started = true;
    documents.init(me);
    assistants.init(me);
    admin.init(me);
  }
  authed();
  route();
}

async function login(username, password) {
  const res = await request('/auth/login', { method: 'POST', json: { username, password }, auth: false });
  setToken(res.access_token);
}

function wireLogin() {
  const form = $('#login-form');
  const submit = async (register) => {
    const username = $('#login-username').value.trim();
    const password = $('#login-password').value;
    const err = $('#login-error');
    err.textContent = '';
    if (!username || !password) {
      err.textContent = t('login.missing');
      return;
    }
    const buttons = [$('#login-submit'), $('#register-submit')];
    buttons.forEach((b) => (b.disabled = true));
    try {
      if (register) await request('/auth/register', { method: 'POST', json: { username, password }, auth: false });
      await login(username, password);
      await afterLogin();
      if (register) toast(t('login.registered'), 'success');
    } catch (e) {
      setToken(null);
      err.textContent = errorText(e);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    submit(false);
  });
  $('#register-submit').addEventListener('click', () => submit(true));
}

const VIEWS = ['#view-documents', '#doc-view', '#view-assistants', '#view-admin', '#view-missing'];

/** Show the view of the current hash. */
function route() {
  if (!me || !getToken()) return;
  const hash = location.hash.replace(/^#/, '') || '/documents';
  const parts = hash.split('/').filter(Boolean);
  let view = '#view-missing';
  let nav = null;
  if (parts.length === 0 || (parts[0] === 'documents' && parts.length === 1)) {
    view = '#view-documents';
    nav = 'documents';
  } else if (parts[0] === 'documents') {
    view = '#doc-view';
    nav = 'documents';
  } else if (parts[0] === 'assistants') {
    view = '#view-assistants';
    nav = 'assistants';
  } else if (parts[0] === 'admin') {
    view = '#view-admin';
    nav = 'admin';
  }
  const changed = $(view).hidden;
  for (const v of VIEWS) $(v).hidden = v !== view;
  for (const a of $$('.nav a')) {
    if (a.id === `nav-${nav}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  admin.active(view === '#view-admin');
  if (view === '#view-documents') documents.showList();
  else if (view === '#doc-view') {
    const chunk = parts[2] && parts[2].startsWith('chunk-') ? parts[2].slice(6) : null;
    documents.showDocument(decodeURIComponent(parts[1]), chunk);
    return; // the document view focuses its title or chunk itself
  } else if (view === '#view-assistants') assistants.show();
  if (changed) $(`${view} .view-title`)?.focus({ preventScroll: false });
}

async function start() {
  applyI18n();
  for (const sel of $$('.lang-select')) sel.addEventListener('change', () => setLang(sel.value));
  wireLogin();
  $('#logout').addEventListener('click', () => {
    assistants.forget();
    setToken(null);
    sessionStorage.removeItem(USER_KEY);
    location.hash = '#/documents';
    location.reload();
  });
  onUnauthorized(() => showLogin(t('login.expired')));
  window.addEventListener('hashchange', route);
  if (getToken()) {
    try {
      await afterLogin();
      return;
    } catch {
      setToken(null);
    }
  }
  showLogin('');
}

document.documentElement.lang = getLang();
start();
