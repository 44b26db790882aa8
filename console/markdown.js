// markdown.js — safe rendering of model output: markdown-it with raw HTML and
// linkify off, then DOMPurify on its output (belt and braces). Links keep only
// http(s) or relative targets and always carry rel="noopener noreferrer";
// links to the service's document URLs are turned into console routes.

import MarkdownIt from './vendor/markdown-it/markdown-it.esm.min.js';
import DOMPurify from './vendor/dompurify/purify.es.js';

const md = new MarkdownIt({ html: false, linkify: false, breaks: true, typographer: false });
// Images would load from anywhere (and CSP forbids other origins anyway):
// `![alt](url)` stays text.
md.disable(['image']);

/** The console route of a service document URL such as /documents/ID#chunk-CID. */
export function consoleHref(url) {
  const m = /^\/documents\/([A-Za-z0-9_-]{1,64})(?:#chunk-([A-Za-z0-9_-]{1,64}))?$/.exec(url || '');
  if (!m) return null;
  return m[2] ? `#/documents/${m[1]}/chunk-${m[2]}` : `#/documents/${m[1]}`;
}

/** An href that is safe to follow: http(s), or relative without a scheme. */
export function safeHref(url) {
  const s = String(url || '').trim();
  if (!s) return null;
  const route = consoleHref(s);
  if (route) return route;
  if (/^https?:\/\//i.test(s)) return s;
  // Relative: no scheme before the first / ? or #.
  if (/^[^:/?#]*:/.test(s) || s.startsWith('//')) return null;
  return s;
}

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    const href = safeHref(node.getAttribute('href'));
    if (href) node.setAttribute('href', href);
    else node.removeAttribute('href');
    node.setAttribute('rel', 'noopener noreferrer');
    if (href && /^https?:/i.test(href)) node.setAttribute('target', '_blank');
    else node.removeAttribute('target');
  }
  // No inline style ever reaches the page (CSP forbids it anyway).
  node.removeAttribute?.('style');
});

const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  FORBID_TAGS: ['style', 'img', 'form', 'input', 'button', 'textarea', 'select', 'iframe', 'svg', 'math'],
  FORBID_ATTR: ['style', 'class', 'id'],
  ALLOWED_URI_REGEXP: /^(?:https?:|[^a-z]|[a-z+.-]+(?:[^a-z+.\-:]|$))/i,
};

/** Render Markdown text into `el`, replacing what was there. */
export function renderMarkdown(el, text) {
  const html = md.render(String(text || ''));
  const frag = DOMPurify.sanitize(html, PURIFY);
  el.replaceChildren(frag);
}

const ENTITIES = { '&lt;': '<', '&gt;': '>', '&amp;': '&', '&quot;': '"', '&#39;': "'", '&#x27;': "'", '&apos;': "'" };

/** Decode the few entities an HTML-escaped snippet carries. */
export function decodeEntities(s) {
  return String(s).replace(/&(?:lt|gt|amp|quot|apos|#39|#x27);/g, (m) => ENTITIES[m]);
}

/**
 * Fill `el` with a search snippet: HTML-escaped text with <mark>…</mark>
 * around hits. Built from text nodes and <mark> elements, never innerHTML.
 */
export function renderSnippet(el, snippet) {
  el.replaceChildren();
  const parts = String(snippet || '').split(/(<mark>|<\/mark>)/);
  let inMark = false;
  for (const part of parts) {
    if (part === '<mark>') inMark = true;
    else if (part === '</mark>') inMark = false;
    else if (part) {
      const text = document.createTextNode(decodeEntities(part));
      if (inMark) {
        const m = document.createElement('mark');
        m.append(text);
        el.append(m);
      } else el.append(text);
    }
  }
}
