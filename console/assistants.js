// assistants.js — the three assistant panes (generate, optimize, search),
// bound to the current report task. Each pane loads its session history,
// sends a turn and reads the SSE answer (rendered as Markdown on animation
// frames), shows citations, tool calls and sources, can stop a stream and
// resumes a running one after a page reload from sessionStorage (only events
// with an id above the last one applied are used, so nothing is duplicated).

import { request, stream, ApiError, whenAuthed, sleep } from './api.js';
import { t, onLangChange } from './i18n.js';
import { renderMarkdown, safeHref, consoleHref } from './markdown.js';
import { $, $$, h, toast, confirmDialog, errorText } from './ui.js';

const KINDS = ['generate', 'optimize', 'search'];
let me = null;
let tasks = [];
let current = null;
const panes = {};
let activeTab = 'generate';

// ---------------------------------------------------------------- storage

const tasksKey = () => `reportd.tasks.${me.id}`;
const currentKey = () => `reportd.task.${me.id}`;
const draftKey = (task, kind) => `reportd.draft.${me.id}.${task}.${kind}`;
const streamKey = (kind) => `reportd.stream.${me.id}.${kind}`;

function readJSON(store, key, fallback) {
  try {
    const v = store.getItem(key);
    return v ? JSON.parse(v) : fallback;
  } catch {
    return fallback;
  }
}

function saveTasks() {
  localStorage.setItem(tasksKey(), JSON.stringify(tasks));
  if (current) localStorage.setItem(currentKey(), current);
}

function saveDraft(pane) {
  if (!current) return;
  const d = { input: pane.input.value, instruction: pane.instr ? pane.instr.value : '' };
  if (!d.input && !d.instruction) sessionStorage.removeItem(draftKey(current, pane.kind));
  else sessionStorage.setItem(draftKey(current, pane.kind), JSON.stringify(d));
}

function restoreDraft(pane) {
  const d = readJSON(sessionStorage, draftKey(current, pane.kind), null);
  pane.input.value = d?.input || '';
  if (pane.instr) pane.instr.value = d?.instruction || '';
}

function saveRecord(pane) {
  if (!pane.record) return;
  sessionStorage.setItem(streamKey(pane.kind), JSON.stringify(pane.record));
}

function clearRecord(pane) {
  pane.record = null;
  sessionStorage.removeItem(streamKey(pane.kind));
}

/** Forget this tab's drafts and pending streams (on logout). */
export function forget() {
  for (const store of [sessionStorage]) {
    for (let i = store.length - 1; i >= 0; i--) {
      const k = store.key(i);
      if (k && (k.startsWith('reportd.draft.') || k.startsWith('reportd.stream.'))) store.removeItem(k);
    }
  }
}

// ---------------------------------------------------------------- tasks

/** A task id from a name: letters, digits, - and _ only, at most 64, unique. */
function slugId(name) {
  const ascii = name
    .normalize('NFKD')
    .replace(/[^A-Za-z0-9_-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .toLowerCase()
    .slice(0, 40)
    .replace(/-+$/, '');
  const rand = Array.from(crypto.getRandomValues(new Uint8Array(5)), (b) => (b % 36).toString(36)).join('');
  const id = `${ascii || 't'}-${rand}`;
  return /^[A-Za-z0-9_-]{1,64}$/.test(id) ? id : `t-${rand}`;
}

function paintTaskSelect() {
  const sel = $('#task-select');
  sel.replaceChildren(...tasks.map((tk) => h('option', { value: tk.id, text: tk.name })));
  sel.value = current;
}

function taskName(id) {
  return tasks.find((tk) => tk.id === id)?.name || id;
}

function createTask(name) {
  const task = { id: slugId(name), name, fresh: true };
  tasks.push(task);
  current = task.id;
  saveTasks();
  paintTaskSelect();
  loadTask();
}

function wireTaskDialog() {
  const dlg = $('#task-dialog');
  $('#task-new').addEventListener('click', () => {
    $('#task-name').value = '';
    $('#task-error').textContent = '';
    dlg.showModal();
    $('#task-name').focus();
  });
  $('#task-cancel').addEventListener('click', () => dlg.close());
  dlg.addEventListener('close', () => $('#task-new').focus());
  $('#task-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('#task-name').value.trim();
    if (!name) {
      $('#task-error').textContent = t('ai.taskNameMissing');
      return;
    }
    dlg.close();
    createTask(name);
  });
  $('#task-select').addEventListener('change', () => {
    current = $('#task-select').value;
    saveTasks();
    loadTask();
  });
}

// ---------------------------------------------------------------- rendering

function sourceLink(src, cls) {
  let href = null;
  if (src.document_id && src.chunk_id) href = `#/documents/${encodeURIComponent(src.document_id)}/chunk-${encodeURIComponent(src.chunk_id)}`;
  else href = consoleHref(src.url) || safeHref(src.url);
  const external = href && /^https?:/i.test(href);
  return h(`a.${cls}`, {
    href: href || undefined,
    rel: 'noopener noreferrer',
    target: external ? '_blank' : undefined,
    text: src.title || src.url || '—',
  });
}

/** A list of sources: generate → .citations a.citation, others → .sources a.source. */
function sourcesBlock(kind, sources) {
  if (!Array.isArray(sources) || !sources.length) return null;
  const cls = kind === 'generate' ? 'citation' : 'source';
  return h(
    `div.${kind === 'generate' ? 'citations' : 'sources'}`,
    {},
    h('p.block-title', { text: t('ai.sources') }),
    h(
      'ol',
      {},
      sources.map((s) => h('li', {}, sourceLink(s, cls), s.snippet ? h('p.source-snippet', { text: s.snippet }) : null)),
    ),
  );
}

function toolCallEl(data) {
  const args = data.arguments && typeof data.arguments === 'object' ? data.arguments : {};
  const q = args.query ?? args.q ?? (Object.keys(args).length ? JSON.stringify(args) : '');
  return h('div.tool-call', {}, h('span.tool-label', { text: `${t('ai.toolCall')} · ` }), h('code.tool-name', { text: data.name || '' }), q ? h('span.tool-query', { text: ` “${q}”` }) : null);
}

function toolResultEl(data) {
  const results = Array.isArray(data.results) ? data.results : [];
  return h(
    'div.tool-result',
    {},
    h('p.block-title', { text: `${t('ai.toolResult')} · ${data.name || ''} (${results.length})` }),
    h('ol', {}, results.map((r) => h('li', {}, sourceLink(r, 'source'), r.snippet ? h('p.source-snippet', { text: r.snippet }) : null))),
  );
}

function userMsg(content) {
  return h('div.msg', { dataset: { role: 'user' } }, h('p.msg-role', { text: t('ai.you') }), h('div.msg-body.plain', { text: content }));
}

function assistantMsg() {
  const el = h('div.msg', { dataset: { role: 'assistant' } }, h('p.msg-role', { text: t('ai.assistant') }), h('div.msg-tools'), h('div.msg-body.md'), h('div.msg-foot'));
  return el;
}

function markFinished(kind, el, finish, sources) {
  el.classList.remove('streaming');
  el.dataset.finish = finish || 'stop';
  const foot = el.querySelector('.msg-foot');
  foot.replaceChildren();
  if (finish === 'cancelled') foot.append(h('span.tag.stopped', { text: t('ai.stopped') }));
  if (finish === 'length') foot.append(h('span.tag', { text: t('ai.truncated') }));
  const block = sourcesBlock(kind, sources);
  if (block) foot.append(block);
}

function historyMessage(pane, m) {
  if (m.role === 'user') return userMsg(m.content);
  const el = assistantMsg();
  renderMarkdown(el.querySelector('.msg-body'), m.content);
  markFinished(pane.kind, el, m.finish_reason || 'stop', m.sources);
  return el;
}

function nearBottom(log) {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 60;
}

function scrollDown(log) {
  log.scrollTop = log.scrollHeight;
}

function emptyNote() {
  return h('p.pane-empty.muted', { text: t('ai.empty') });
}

// ---------------------------------------------------------------- panes

function setStreaming(pane, on) {
  pane.streaming = on;
  pane.stop.hidden = !on;
  pane.stop.disabled = !on;
  pane.send.disabled = on;
  pane.el.classList.toggle('is-streaming', on);
}

async function loadHistory(pane) {
  const seq = ++pane.loadSeq;
  const task = current;
  pane.log.replaceChildren();
  pane.err.textContent = '';
  let messages = [];
  // A task created here and never used has no session yet: skip the 404.
  const fresh = tasks.find((tk) => tk.id === task)?.fresh;
  if (!fresh) {
    try {
      const res = await request(`/ai/sessions/${pane.kind}/${encodeURIComponent(task)}`);
      messages = res.messages || [];
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        // Signed out meanwhile: load again once the user is back.
        await whenAuthed();
        if (seq === pane.loadSeq) return loadHistory(pane);
        return;
      }
      if (!(e instanceof ApiError && e.status === 404)) pane.err.textContent = errorText(e);
    }
  }
  if (seq !== pane.loadSeq || task !== current) return;
  // A stream still pending from before a reload?
  const rec = readJSON(sessionStorage, streamKey(pane.kind), null);
  let resumeRec = null;
  if (rec && rec.task_id === task && rec.stream_id && !pane.streaming) {
    const n = messages.length;
    const saved = Number(rec.saved_history_len) || 0;
    // The round is saved when the answer completes: a longer history means it
    // completed while the page was away (at the size cap, compare the last turn).
    const finished = n > saved || (saved >= 40 && n >= 2 && messages[n - 1].role === 'assistant' && String(messages[n - 2].content).includes(rec.user));
    if (finished) {
      sessionStorage.removeItem(streamKey(pane.kind));
    } else resumeRec = rec;
  }
  pane.log.replaceChildren(...messages.map((m) => historyMessage(pane, m)));
  pane.historyLen = messages.length;
  if (!messages.length && !resumeRec) pane.log.append(emptyNote());
  scrollDown(pane.log);
  if (resumeRec) resume(pane, resumeRec);
}

function scheduleRender(pane) {
  if (pane.raf) return;
  pane.raf = requestAnimationFrame(() => {
    pane.raf = 0;
    renderNow(pane);
  });
}

function renderNow(pane) {
  if (!pane.msgEl) return;
  const stick = nearBottom(pane.log);
  renderMarkdown(pane.msgEl.querySelector('.msg-body'), pane.text);
  if (stick) scrollDown(pane.log);
}

/** Apply one SSE event to the pane's current answer (ignoring replays). */
function applyEvent(pane, ev) {
  const id = Number(ev.id);
  if (Number.isFinite(id) && ev.id !== null) {
    if (id <= pane.lastId) return;
    pane.lastId = id;
  }
  const data = ev.data && typeof ev.data === 'object' ? ev.data : {};
  const rec = pane.record;
  if (rec) rec.last_id = pane.lastId;
  const stick = nearBottom(pane.log);
  switch (ev.event) {
    case 'start':
      pane.streamId = data.stream_id;
      if (rec) {
        rec.stream_id = data.stream_id;
        rec.provider = data.provider;
      }
      pane.offline.hidden = data.provider !== 'offline';
      // The turn is accepted: its draft is no longer needed.
      if (pane.clearInputOnStart) {
        pane.input.value = '';
        if (pane.instr) pane.instr.value = '';
        saveDraft(pane);
        pane.clearInputOnStart = false;
      }
      if (pane.cancelRequested) cancel(pane);
      break;
    case 'delta':
      pane.text += typeof data.content === 'string' ? data.content : '';
      if (rec) rec.text = pane.text;
      scheduleRender(pane);
      break;
    case 'tool_call':
      pane.msgEl.querySelector('.msg-tools').append(toolCallEl(data));
      rec?.extras.push({ event: 'tool_call', data });
      break;
    case 'tool_result':
      pane.msgEl.querySelector('.msg-tools').append(toolResultEl(data));
      rec?.extras.push({ event: 'tool_result', data });
      break;
    case 'done':
      pane.done = true;
      renderNow(pane);
      markFinished(pane.kind, pane.msgEl, data.finish_reason, data.sources);
      break;
    case 'error':
      // The instance serving this response is stopping (a deploy): not the
      // end of the answer. The connection ends; `follow` reconnects with
      // Last-Event-ID and another instance carries on.
      if (data.code === 'instance_stopping') return;
      pane.done = true;
      renderNow(pane);
      markFinished(pane.kind, pane.msgEl, 'error');
      pane.err.textContent = errorText(new ApiError(200, data.detail, data.code));
      break;
    default:
      break;
  }
  if (stick) scrollDown(pane.log);
  if (pane.done) clearRecord(pane);
  else saveRecord(pane);
}

/** Read a stream to its end; reconnect with Last-Event-ID if it drops early. */
async function follow(pane, first) {
  const ctl = new AbortController();
  pane.ctl = ctl;
  let attempt = 0;
  let open = first;
  for (;;) {
    try {
      await open(ctl.signal);
      if (pane.done || ctl.signal.aborted) return;
    } catch (e) {
      if (ctl.signal.aborted || e.name === 'AbortError') return;
      // Once the stream has started, a dropped connection is resumed from the
      // last event; an error before that (409, 422, 429…) ends the turn.
      const status = e instanceof ApiError ? e.status : 0;
      const retryable = pane.streamId && (status === 0 || status === 401 || status === 429 || status >= 500);
      if (!retryable) throw e;
      if (status === 401) await whenAuthed();
      if (status === 429 && e.retryAfter) await sleep(e.retryAfter * 1000, ctl.signal);
    }
    if (!pane.streamId) throw new ApiError(0, '', 'stream_lost');
    attempt += 1;
    if (attempt > 5) throw new ApiError(0, '', 'stream_lost');
    await sleep(Math.min(4000, 500 * attempt), ctl.signal);
    if (ctl.signal.aborted) return;
    open = (signal) =>
      stream(`/ai/streams/${encodeURIComponent(pane.streamId)}`, {
        headers: { 'Last-Event-ID': String(pane.lastId) },
        signal,
        onEvent: (ev) => applyEvent(pane, ev),
      });
  }
}

function beginAnswer(pane, userText) {
  pane.log.querySelector('.pane-empty')?.remove();
  pane.err.textContent = '';
  const u = userMsg(userText);
  const a = assistantMsg();
  a.classList.add('streaming');
  a.querySelector('.msg-body').append(h('span.typing', { text: t('ai.thinking') }));
  pane.log.append(u, a);
  scrollDown(pane.log);
  pane.msgEl = a;
  pane.userEl = u;
  pane.text = '';
  pane.lastId = 0;
  pane.streamId = null;
  pane.done = false;
  pane.cancelRequested = false;
  setStreaming(pane, true);
}

function endAnswer(pane, err) {
  if (pane.raf) cancelAnimationFrame(pane.raf);
  pane.raf = 0;
  if (err) {
    if (!pane.streamId && !pane.text) {
      // Refused before streaming began: take the turn back out of the log.
      pane.msgEl?.remove();
      pane.userEl?.remove();
      if (!pane.log.children.length) pane.log.append(emptyNote());
    } else if (pane.msgEl && !pane.done) {
      renderNow(pane);
      markFinished(pane.kind, pane.msgEl, 'error');
    }
    pane.err.textContent = errorText(err);
    clearRecord(pane);
  } else if (pane.msgEl && !pane.done) {
    renderNow(pane);
    markFinished(pane.kind, pane.msgEl, 'error');
    clearRecord(pane);
  }
  pane.msgEl = null;
  pane.ctl = null;
  pane.clearInputOnStart = false;
  setStreaming(pane, false);
}

async function send(pane) {
  if (pane.streaming || !current) return;
  const text = pane.input.value.trim();
  if (!text) {
    pane.err.textContent = t('ai.emptyInput');
    pane.input.focus();
    return;
  }
  const instruction = pane.instr ? pane.instr.value.trim() : '';
  const body = pane.kind === 'optimize' ? { task_id: current, text, ...(instruction ? { instruction } : {}) } : { task_id: current, message: text };
  const shown = pane.kind === 'optimize' && instruction ? `${text}\n\n${t('ai.instruction', { text: instruction })}` : text;
  const tk = tasks.find((x) => x.id === current);
  if (tk?.fresh) {
    delete tk.fresh;
    saveTasks();
  }
  beginAnswer(pane, shown);
  pane.clearInputOnStart = true;
  pane.record = { kind: pane.kind, task_id: current, stream_id: null, last_id: 0, text: '', user: text, shown, extras: [], saved_history_len: pane.historyLen ?? 0 };
  try {
    await follow(pane, (signal) => stream(`/ai/${pane.kind}`, { method: 'POST', json: body, signal, onEvent: (ev) => applyEvent(pane, ev) }));
    if (pane.done) pane.historyLen = (pane.historyLen ?? 0) + 2;
    endAnswer(pane, null);
  } catch (e) {
    endAnswer(pane, e);
  }
}

/** Continue a stream that was running when the page was reloaded. */
async function resume(pane, rec) {
  beginAnswer(pane, rec.shown || rec.user || '');
  pane.record = rec;
  pane.text = rec.text || '';
  pane.lastId = Number(rec.last_id) || 0;
  pane.streamId = rec.stream_id;
  pane.offline.hidden = rec.provider !== 'offline';
  const tools = pane.msgEl.querySelector('.msg-tools');
  for (const x of rec.extras || []) tools.append(x.event === 'tool_call' ? toolCallEl(x.data) : toolResultEl(x.data));
  if (pane.text) renderNow(pane);
  else pane.msgEl.querySelector('.msg-body').replaceChildren(h('span.typing', { text: t('ai.resuming') }));
  try {
    await follow(pane, (signal) =>
      stream(`/ai/streams/${encodeURIComponent(rec.stream_id)}`, {
        headers: { 'Last-Event-ID': String(pane.lastId) },
        signal,
        onEvent: (ev) => applyEvent(pane, ev),
      }),
    );
    endAnswer(pane, null);
  } catch (e) {
    endAnswer(pane, e);
  }
}

async function cancel(pane) {
  if (!pane.streaming) return;
  if (!pane.streamId) {
    pane.cancelRequested = true;
    return;
  }
  pane.stop.disabled = true;
  try {
    await request(`/ai/streams/${encodeURIComponent(pane.streamId)}/cancel`, { method: 'POST' });
  } catch (e) {
    pane.err.textContent = errorText(e);
    pane.stop.disabled = false;
  }
}

async function clearSession(pane) {
  const ok = await confirmDialog(t('ai.confirmClear', { pane: t(`ai.${pane.kind}`), task: taskName(current) }), { ok: t('ai.clear') });
  if (!ok) return;
  try {
    await request(`/ai/sessions/${pane.kind}/${encodeURIComponent(current)}`, { method: 'DELETE' });
    pane.log.replaceChildren(emptyNote());
    pane.historyLen = 0;
    pane.err.textContent = '';
    toast(`${t(`ai.${pane.kind}`)} · ${t('ai.cleared')}`, 'success');
  } catch (e) {
    pane.err.textContent = errorText(e);
  }
}

/** Switch every pane to the current task. */
function loadTask() {
  for (const kind of KINDS) {
    const pane = panes[kind];
    if (pane.streaming) {
      // Detach: the server finishes the turn and saves it in the old task's session.
      pane.ctl?.abort();
      clearRecord(pane);
      endAnswer(pane, null);
    }
    restoreDraft(pane);
    loadHistory(pane);
  }
}

function selectTab(kind) {
  activeTab = kind;
  for (const tab of $$('.pane-tab')) {
    const on = tab.dataset.kind === kind;
    tab.setAttribute('aria-selected', on ? 'true' : 'false');
    tab.tabIndex = on ? 0 : -1;
  }
  for (const k of KINDS) panes[k].el.classList.toggle('tab-hidden', k !== kind);
}

function wirePane(el) {
  const kind = el.dataset.kind;
  const pane = {
    kind,
    el,
    log: el.querySelector('.pane-log'),
    input: el.querySelector('.pane-input'),
    instr: el.querySelector('.pane-instruction'),
    send: el.querySelector('.pane-send'),
    stop: el.querySelector('.pane-stop'),
    clear: el.querySelector('.pane-clear'),
    err: el.querySelector('.pane-error'),
    offline: el.querySelector('.pane-offline'),
    streaming: false,
    loadSeq: 0,
    lastId: 0,
    text: '',
    record: null,
  };
  panes[kind] = pane;
  el.querySelector('.pane-form').addEventListener('submit', (e) => {
    e.preventDefault();
    send(pane);
  });
  pane.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      send(pane);
    }
  });
  pane.input.addEventListener('input', () => saveDraft(pane));
  pane.instr?.addEventListener('input', () => saveDraft(pane));
  pane.stop.addEventListener('click', () => cancel(pane));
  pane.clear.addEventListener('click', () => clearSession(pane));
}

export function init(user) {
  me = user;
  for (const el of $$('.pane')) wirePane(el);
  tasks = readJSON(localStorage, tasksKey(), []).filter((tk) => tk && /^[A-Za-z0-9_-]{1,64}$/.test(tk.id));
  if (!tasks.length) {
    tasks.push({ id: slugId('report'), name: t('ai.defaultTask'), fresh: true });
  }
  current = localStorage.getItem(currentKey());
  // A stream pending from before a reload decides the task to show.
  for (const kind of KINDS) {
    const rec = readJSON(sessionStorage, streamKey(kind), null);
    if (rec && tasks.some((tk) => tk.id === rec.task_id)) current = rec.task_id;
  }
  if (!tasks.some((tk) => tk.id === current)) current = tasks[0].id;
  saveTasks();
  paintTaskSelect();
  wireTaskDialog();
  for (const tab of $$('.pane-tab')) {
    tab.addEventListener('click', () => selectTab(tab.dataset.kind));
    tab.addEventListener('keydown', (e) => {
      const i = KINDS.indexOf(tab.dataset.kind);
      let j = null;
      if (e.key === 'ArrowRight') j = (i + 1) % KINDS.length;
      if (e.key === 'ArrowLeft') j = (i + KINDS.length - 1) % KINDS.length;
      if (j !== null) {
        e.preventDefault();
        selectTab(KINDS[j]);
        $(`#tab-${KINDS[j]}`).focus();
      }
    });
  }
  selectTab(activeTab);
  loadTask();
  onLangChange(() => {
    // Role labels and footers are simple text: refresh them in place.
    for (const el of $$('.msg-role')) el.textContent = t(el.parentElement.dataset.role === 'user' ? 'ai.you' : 'ai.assistant');
    for (const el of $$('.pane-empty')) el.textContent = t('ai.empty');
    for (const el of $$('.tag.stopped')) el.textContent = t('ai.stopped');
    for (const el of $$('.block-title')) {
      if (el.parentElement.matches('.citations, .sources')) el.textContent = t('ai.sources');
    }
  });
}

export function show() {
  // Nothing to reload: panes keep their state while the user navigates.
}

