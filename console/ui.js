// ui.js — small DOM helpers shared by the views: element builder (text only,
// never HTML), the toast region, the confirmation dialog, formatting.

import { t, locale, has as hasKey } from './i18n.js';

/** Create an element: h('a.cls', {href}, child, 'text'…); strings become text nodes. */
export function h(tag, attrs, ...children) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElement(name);
  if (classes.length) el.className = classes.join(' ');
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'text') el.textContent = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'hidden' || k === 'disabled') el[k] = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

let toastTimer = null;
/** A global message in the role=status region. kind: info | error | success. */
export function toast(message, kind = 'info') {
  const el = $('#toast');
  el.textContent = message;
  el.dataset.kind = kind;
  el.classList.add('show');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove('show'), kind === 'error' ? 7000 : 3500);
}

/** Ask for confirmation in dialog#confirm. Resolves true (OK) or false (Cancel, Esc). */
export function confirmDialog(text, { ok = t('common.ok'), danger = true } = {}) {
  const dlg = $('#confirm');
  $('#confirm-text').textContent = text;
  const okBtn = $('#confirm-ok');
  okBtn.textContent = ok;
  okBtn.classList.toggle('danger', danger);
  okBtn.classList.toggle('primary', !danger);
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const finish = (value) => {
      okBtn.removeEventListener('click', onOk);
      $('#confirm-cancel').removeEventListener('click', onCancel);
      dlg.removeEventListener('close', onClose);
      if (dlg.open) dlg.close();
      if (opener && opener.focus && document.contains(opener)) opener.focus();
      resolve(value);
    };
    const onOk = () => finish(true);
    const onCancel = () => finish(false);
    const onClose = () => finish(false);
    okBtn.addEventListener('click', onOk);
    $('#confirm-cancel').addEventListener('click', onCancel);
    dlg.addEventListener('close', onClose);
    dlg.showModal();
    $('#confirm-cancel').focus();
  });
}

/** Human size: 1.2 MB. */
export function humanSize(bytes) {
  const n = Number(bytes) || 0;
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatDate(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso || '');
  return d.toLocaleString(locale(), { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit' });
}

/** A readable message for an ApiError: translated by code where we can, else the server's detail. */
export function errorText(err) {
  if (!err) return '';
  if (err.code === 'network' || err.status === 0) return t('common.networkError');
  const s = err.retryAfter ?? '';
  if (err.code && hasKey(`err.${err.code}`)) return t(`err.${err.code}`, { s });
  if (err.status === 429) return err.detail ? `${err.detail}${s !== '' ? ` (${s} s)` : ''}` : t('err.rate_limited', { s });
  if (err.status === 403 && !err.detail) return t('err.forbidden');
  return err.detail || err.message || t('common.error', { status: err.status });
}

