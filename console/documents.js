// documents.js — the documents view: upload (file input and drag and drop,
// several files, at most two imports in flight), polling of each import with
// a progress bar, the paged list, delete with confirmation, full-text search
// with highlighted snippets, and one document's chunks (#/documents/<id>,
// optionally /chunk-<chunk_id> to scroll to and highlight a chunk).

import { request, sleep, whenAuthed, ApiError } from './api.js';
import { t, onLangChange } from './i18n.js';
import { renderSnippet } from './markdown.js';
import { $, h, toast, confirmDialog, humanSize, formatDate, errorText } from './ui.js';

const PAGE = 20;
const CHUNK_PAGE = 100;
const POLL_MS = 700;
const MAX_IN_FLIGHT = 2; // the service's default LIMIT_IMPORTS_PER_USER

let listOffset = 0;
let listTotal = 0;
let listItems = [];
const titles = new Map(); // document id → title, for search hits
let lastHits = null;

// ---------------------------------------------------------------- uploads

const uploads = []; // {file, row, status, stage, progress, error}
let inFlight = 0;

function uploadRow(up) {
  const row = h(
    'li.upload',
    { dataset: { status: up.status } },
    h('div.upload-top', {}, h('span.upload-name', { text: up.file.name, title: up.file.name }), h('span.upload-size.muted', { text: humanSize(up.file.size) })),
    h('progress.upload-bar', { max: 100, value: 0, 'aria-label': up.file.name }),
    h('div.upload-bottom', {}, h('span.upload-stage'), h('span.upload-pct.muted')),
    h('p.upload-error', { role: 'alert' }),
  );
  return row;
}

function paintUpload(up) {
  const row = up.row;
  row.dataset.status = up.status;
  row.querySelector('.upload-bar').value = Math.max(0, Math.min(100, up.progress || 0));
  row.querySelector('.upload-pct').textContent = `${Math.round(up.progress || 0)}%`;
  let stage = up.stageKey ? t(up.stageKey, up.stageVars) : up.stage || '';
  if (!stage) stage = t(`upload.${up.status}`);
  row.querySelector('.upload-stage').textContent = stage;
  row.querySelector('.upload-error').textContent = up.error || '';
  paintClearButton();
}

const TERMINAL = new Set(['completed', 'failed', 'refused']);

function paintClearButton() {
  $('#uploads-clear').hidden = !uploads.some((u) => TERMINAL.has(u.status));
}

function addFiles(files) {
  // The newest batch goes on top, its files in the order they were chosen.
  const batch = document.createDocumentFragment();
  for (const file of files) {
    const up = { file, status: 'pending', progress: 0, stage: '', stageKey: 'upload.queued', error: '' };
    up.row = uploadRow(up);
    uploads.push(up);
    batch.append(up.row);
    paintUpload(up);
  }
  $('#uploads').prepend(batch);
  pump();
}

function pump() {
  while (inFlight < MAX_IN_FLIGHT) {
    const next = uploads.find((u) => u.status === 'pending' && !u.started);
    if (!next) return;
    next.started = true;
    inFlight += 1;
    runUpload(next).finally(() => {
      inFlight -= 1;
      pump();
    });
  }
}

async function runUpload(up) {
  up.stageKey = 'upload.uploading';
  paintUpload(up);
  let taskId;
  for (;;) {
    try {
      await whenAuthed();
      const form = new FormData();
      form.append('file', up.file, up.file.name);
      const res = await request('/Import_Doc/', { method: 'POST', body: form });
      taskId = res.task_id;
      break;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) continue; // wait for the login, then retry
      up.status = 'refused';
      up.stageKey = 'upload.refused';
      up.error = e instanceof ApiError ? e.detail || errorText(e) : String(e);
      paintUpload(up);
      return;
    }
  }
  up.taskId = taskId;
  up.stageKey = null;
  up.status = 'pending';
  paintUpload(up);
  await poll(up);
}

async function poll(up) {
  for (;;) {
    let wait = POLL_MS;
    try {
      await whenAuthed();
      const s = await request(`/check_import_status/${encodeURIComponent(up.taskId)}`);
      up.status = s.status;
      up.progress = Math.max(up.progress, Number(s.progress) || 0);
      up.stage = s.stage || s.message || '';
      up.stageKey = null;
      if (s.status === 'completed') {
        up.progress = 100;
        up.stage = '';
        up.documentId = s.document_id;
        paintUpload(up);
        toast(t('docs.imported', { name: up.file.name }), 'success');
        refreshList();
        return;
      }
      if (s.status === 'failed') {
        up.error = s.error || s.message || t('upload.failed');
        up.stage = '';
        paintUpload(up);
        return;
      }
      paintUpload(up);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) continue;
      if (e instanceof ApiError && e.status === 429) {
        const s = e.retryAfter ?? 1;
        wait = s * 1000;
        up.stageKey = 'upload.waiting';
        up.stageVars = { s };
        paintUpload(up);
      } else if (e instanceof ApiError && e.status === 404) {
        up.status = 'failed';
        up.error = e.detail || errorText(e);
        paintUpload(up);
        return;
      } else {
        // A network blip: keep polling, a little slower.
        wait = 2000;
      }
    }
    await sleep(wait);
  }
}

function wireUploads() {
  const input = $('#file-input');
  input.addEventListener('change', () => {
    if (input.files && input.files.length) addFiles([...input.files]);
    input.value = '';
  });
  $('#uploads-clear').addEventListener('click', () => {
    for (let i = uploads.length - 1; i >= 0; i--) {
      if (TERMINAL.has(uploads[i].status)) {
        uploads[i].row.remove();
        uploads.splice(i, 1);
      }
    }
    paintClearButton();
    $('#file-input').focus();
  });
  const zone = $('#drop-zone');
  let depth = 0;
  zone.addEventListener('dragenter', (e) => {
    e.preventDefault();
    depth += 1;
    zone.classList.add('dragging');
  });
  zone.addEventListener('dragover', (e) => {
    e.preventDefault();
    if (e.dataTransfer) e.dataTransfer.dropEffect = 'copy';
  });
  zone.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove('dragging');
  });
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    depth = 0;
    zone.classList.remove('dragging');
    const files = e.dataTransfer ? [...e.dataTransfer.files] : [];
    if (files.length) addFiles(files);
  });
  // Dropping a file elsewhere on the page must not navigate away from the console.
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());
}

// ---------------------------------------------------------------- list

async function refreshList() {
  try {
    const res = await request(`/documents?limit=${PAGE}&offset=${listOffset}`);
    listItems = res.items || [];
    listTotal = res.total || 0;
    if (!listItems.length && listOffset > 0 && listTotal > 0) {
      listOffset = Math.max(0, Math.floor((listTotal - 1) / PAGE) * PAGE);
      return refreshList();
    }
    for (const d of listItems) titles.set(d.id, d.title);
    paintList();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) toast(errorText(e), 'error');
  }
}

function paintList() {
  const body = $('#doc-list');
  body.replaceChildren(
    ...listItems.map((d) =>
      h(
        'tr.doc-row',
        { dataset: { id: d.id } },
        h('td.doc-title-cell', {}, h('a.doc-title', { href: `#/documents/${encodeURIComponent(d.id)}`, text: d.title || d.filename, title: d.filename })),
        h('td', {}, h('span.doc-format.badge', { text: d.format })),
        h('td.doc-size', { text: humanSize(d.size_bytes) }),
        h('td.doc-chunks', { text: String(d.chunk_count) }),
        h('td.doc-date', { text: formatDate(d.created_at) }),
        h('td.doc-actions', {}, h('button.btn.small.ghost.danger-text.doc-delete', { type: 'button', text: t('docs.delete'), 'aria-label': t('docs.deleteAria', { title: d.title }), onclick: () => deleteDoc(d) })),
      ),
    ),
  );
  $('#doc-empty').hidden = listTotal > 0;
  const pages = Math.max(1, Math.ceil(listTotal / PAGE));
  const page = Math.floor(listOffset / PAGE) + 1;
  $('#doc-page').textContent = t('common.page', { x: page, y: pages, n: listTotal });
  $('#doc-prev').disabled = listOffset === 0;
  $('#doc-next').disabled = listOffset + PAGE >= listTotal;
}

async function deleteDoc(d) {
  const ok = await confirmDialog(t('docs.confirmDelete', { title: d.title }), { ok: t('docs.delete') });
  if (!ok) return;
  try {
    await request(`/documents/${encodeURIComponent(d.id)}`, { method: 'DELETE' });
    titles.delete(d.id);
    toast(t('docs.deleted', { title: d.title }), 'success');
    await refreshList();
  } catch (e) {
    toast(errorText(e), 'error');
  }
}

// ---------------------------------------------------------------- search

async function search(q) {
  const out = $('#search-results');
  if (!q) {
    out.replaceChildren();
    lastHits = null;
    return;
  }
  try {
    const res = await request(`/documents/search?q=${encodeURIComponent(q)}&limit=20`);
    lastHits = res.items || [];
    paintHits();
  } catch (e) {
    lastHits = null;
    out.replaceChildren(h('p.form-error', { text: errorText(e) }));
  }
}

function paintHits() {
  const out = $('#search-results');
  if (!lastHits) return;
  if (!lastHits.length) {
    out.replaceChildren(h('p.muted', { text: t('docs.noHits') }));
    return;
  }
  out.replaceChildren(
    ...lastHits.map((hit) => {
      const snippet = h('p.hit-snippet');
      renderSnippet(snippet, hit.snippet);
      const title = titles.get(hit.document_id);
      return h(
        'article.hit',
        {},
        h('div.hit-top', {},
          h('a.hit-link', { href: `#/documents/${encodeURIComponent(hit.document_id)}/chunk-${encodeURIComponent(hit.chunk_id)}`, text: title || t('docs.hitOpen') }),
          h('span.muted.hit-score', { text: Number(hit.score).toFixed(2) }),
        ),
        h('p.hit-heading', { text: hit.heading_path || t('docs.noHeading') }),
        snippet,
      );
    }),
  );
}

// ---------------------------------------------------------------- one document

let docState = null; // {id, doc, chunks, total, loading}

async function loadChunks(state) {
  const res = await request(`/documents/${encodeURIComponent(state.id)}?limit=${CHUNK_PAGE}&offset=${state.chunks.length}`);
  if (docState !== state) return false;
  state.doc = res;
  state.total = res.chunk_count ?? state.total;
  const chunks = res.chunks || [];
  state.chunks.push(...chunks);
  titles.set(res.id, res.title);
  const box = $('#doc-chunks');
  for (const c of chunks) {
    box.append(
      h('article.chunk', { id: `chunk-${c.id}`, tabindex: '-1', dataset: { position: c.position } },
        h('p.chunk-heading', { text: c.heading_path || t('docs.noHeading') }),
        h('div.chunk-content', { text: c.content }),
      ),
    );
  }
  paintDocMeta(state);
  return chunks.length > 0;
}

function paintDocMeta(state) {
  const d = state.doc;
  if (!d) return;
  $('#doc-view-title').textContent = d.title || d.filename;
  $('#doc-view-meta').textContent = `${t('docs.meta', { format: d.format, size: humanSize(d.size_bytes), chunks: d.chunk_count, date: formatDate(d.created_at) })} · ${t('docs.loaded', { n: state.chunks.length, total: state.total })}`;
  $('#doc-more').hidden = state.chunks.length >= state.total;
}

function highlight(chunkId) {
  const el = document.getElementById(`chunk-${chunkId}`);
  if (!el) return false;
  for (const old of document.querySelectorAll('.chunk.highlight')) old.classList.remove('highlight');
  el.classList.add('highlight');
  el.scrollIntoView({ block: 'center' });
  el.focus({ preventScroll: true });
  return true;
}

export async function showDocument(id, chunkId) {
  if (docState && docState.id === id && docState.chunks.length) {
    // Same document: only move to the chunk (loading more if needed).
    if (chunkId) await revealChunk(docState, chunkId);
    else $('#doc-view-title').focus();
    return;
  }
  const state = { id, doc: null, chunks: [], total: Infinity };
  docState = state;
  $('#doc-chunks').replaceChildren();
  $('#doc-view-title').textContent = '…';
  $('#doc-view-meta').textContent = '';
  $('#doc-view-error').textContent = '';
  $('#doc-more').hidden = true;
  try {
    await loadChunks(state);
    if (chunkId) await revealChunk(state, chunkId);
    else $('#doc-view-title').focus();
  } catch (e) {
    if (docState !== state) return;
    $('#doc-view-title').textContent = t('common.notFound');
    $('#doc-view-error').textContent = errorText(e);
  }
}

async function revealChunk(state, chunkId) {
  while (!highlight(chunkId)) {
    if (state.chunks.length >= state.total || docState !== state) {
      toast(t('docs.chunkMissing'), 'error');
      return;
    }
    const more = await loadChunks(state);
    if (!more) {
      toast(t('docs.chunkMissing'), 'error');
      return;
    }
  }
}

// ---------------------------------------------------------------- wiring

export function showList() {
  docState = null; // reopen a document fresh next time
  refreshList();
}

export function init() {
  wireUploads();
  $('#doc-prev').addEventListener('click', () => {
    listOffset = Math.max(0, listOffset - PAGE);
    refreshList();
  });
  $('#doc-next').addEventListener('click', () => {
    if (listOffset + PAGE < listTotal) listOffset += PAGE;
    refreshList();
  });
  $('#doc-refresh').addEventListener('click', refreshList);
  $('#search-form').addEventListener('submit', (e) => {
    e.preventDefault();
    search($('#search-input').value.trim());
  });
  $('#doc-more').addEventListener('click', async () => {
    const state = docState;
    if (!state) return;
    $('#doc-more').disabled = true;
    try {
      await loadChunks(state);
    } catch (e) {
      toast(errorText(e), 'error');
    } finally {
      $('#doc-more').disabled = false;
    }
  });
  onLangChange(() => {
    for (const up of uploads) paintUpload(up);
    paintList();
    paintHits();
    if (docState) paintDocMeta(docState);
  });
}
