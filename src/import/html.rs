//! HTML pages: the main text only, cut into sections at h1–h6.
//!
//! The bytes are decoded as a browser would (a byte-order mark, then the
//! charset a `<meta>` declares in the first bytes, then UTF-8 if they are
//! valid UTF-8, then a guess by chardetng, which matters for the GBK pages
//! Chinese sites still serve), parsed with html5ever (through `scraper`),
//! and walked once. Scripts, styles, forms, and the navigation chrome around
//! an article (menus, headers and footers, sidebars, share and comment
//! boxes, recognised by element, ARIA role or id/class) are left out; when
//! the page marks its main content (`<main>`, `role=main`, one `<article>`)
//! only that is read. The page's `<title>` is the document's title and its
//! first line.
//!
//! [`Outline`], the builder of heading paths, is shared with the docx parser.

use std::collections::HashSet;

use ego_tree::{NodeId, NodeRef};
use encoding_rs::Encoding;
use scraper::{Html, Node};

use super::parse::{ParseError, ParseErrorKind, ParsedDocument, Progress, Section};

/// How far into the file the `<meta charset>` is looked for. The HTML
/// standard says 1024 bytes; real Chinese pages often put a long `<head>`
/// (scripts, keywords) first, so a little more is read.
const PRESCAN_BYTES: usize = 4096;
/// How deeply elements may nest. html5ever checks "is there an element in
/// scope" by walking its stack of open elements, so its time grows with the
/// square of the depth; browsers stop nesting at about 512 levels (Blink
/// attaches deeper elements to the 512th), so no readable page is deeper.
/// The depth is estimated before parsing (see [`estimated_depth`]).
const MAX_DEPTH: usize = 1024;
/// A "heading" longer than this is a paragraph someone styled as a heading;
/// it is kept as text rather than made part of every heading path under it.
pub(super) const MAX_HEADING_CHARS: usize = 200;

/// Parses a html file into sections.
pub fn parse(bytes: &[u8], progress: Progress<'_>) -> Result<ParsedDocument, ParseError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::new(ParseErrorKind::Empty, "the html file is empty"));
    }
    let text = decode(bytes);
    if estimated_depth(&text) > MAX_DEPTH {
        return Err(ParseError::new(
            ParseErrorKind::TooLarge,
            format!("the html page is too complex: its elements are nested more than {MAX_DEPTH} levels deep"),
        ));
    }
    progress(0.2);
    let html = Html::parse_document(&text);
    drop(text);
    progress(0.6);
    let doc = extract(&html);
    progress(1.0);
    Ok(doc)
}

/// Decodes a page the way a browser picks its encoding.
fn decode(bytes: &[u8]) -> String {
    if let Some((encoding, bom)) = Encoding::for_bom(bytes) {
        return encoding.decode_without_bom_handling(&bytes[bom..]).0.into_owned();
    }
    let is_utf8 = std::str::from_utf8(bytes).is_ok();
    let encoding = match prescan_charset(&bytes[..bytes.len().min(PRESCAN_BYTES)]) {
        // A page saved by a browser or an editor is often re-encoded as UTF-8
        // while keeping its old `<meta charset=gbk>`. Legacy-encoded Chinese
        // text is practically never valid UTF-8, so valid UTF-8 with
        // non-ASCII bytes wins over the label.
        Some(declared) if declared != encoding_rs::UTF_8 && is_utf8 && !bytes.is_ascii() => encoding_rs::UTF_8,
        Some(declared) => declared,
        None if is_utf8 => encoding_rs::UTF_8,
        None => {
            let mut detector = chardetng::EncodingDetector::new();
            detector.feed(bytes, true);
            detector.guess(None, false)
        }
    };
    // GB18030 is a superset of GBK: nothing a GBK page holds is lost.
    let encoding = if encoding == encoding_rs::GBK { encoding_rs::GB18030 } else { encoding };
    encoding.decode_without_bom_handling(bytes).0.into_owned()
}

/// Elements that never hold others, or whose end tag may be left out (a
/// new `<p>` or `<li>` closes the last one): they do not add to the depth.
const FLAT_TAGS: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr",
    "keygen", "p", "li", "dt", "dd", "tr", "td", "th", "thead", "tbody", "tfoot", "option", "optgroup", "rb", "rt",
    "rtc", "rp", "colgroup", "caption", "html", "head", "body",
];

/// Elements whose content is raw text, not markup.
const RAW_TEXT_TAGS: &[&str] =
    &["script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes", "plaintext"];

/// How deeply the page's elements nest, counted from its tags alone: start
/// tags of elements that contain others add a level, their end tags take
/// it back. Comments and the content of scripts and styles are skipped. It
/// is an estimate (unclosed tags count as open to the end), done in one
/// linear pass before the quadratic-in-depth parse.
fn estimated_depth(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut max) = (0usize, 0usize);
    let mut i = 0;
    while let Some(at) = bytes[i..].iter().position(|&b| b == b'<') {
        i += at;
        let rest = &bytes[i..];
        if rest.starts_with(b"<!--") {
            i += find(&rest[2..], b"-->").map_or(rest.len(), |end| end + 2 + 3);
            continue;
        }
        let closing = rest.get(1) == Some(&b'/');
        let name_start = if closing { 2 } else { 1 };
        let name_len = rest[name_start..].iter().take_while(|b| b.is_ascii_alphanumeric()).count();
        if name_len == 0 || !rest[name_start].is_ascii_alphabetic() {
            i += 1;
            continue;
        }
        let name = text[i + name_start..i + name_start + name_len].to_ascii_lowercase();
        let end = rest.iter().position(|&b| b == b'>').unwrap_or(rest.len() - 1);
        let self_closing = end > 0 && rest[end - 1] == b'/';
        i += end + 1;
        if FLAT_TAGS.contains(&name.as_str()) {
            continue;
        }
        if closing {
            depth = depth.saturating_sub(1);
        } else if !self_closing {
            if RAW_TEXT_TAGS.contains(&name.as_str()) {
                // Skip to the matching end tag: "<div>" in a script is text.
                let close = format!("</{name}");
                let lower_rest = &bytes[i..];
                i += lower_rest
                    .windows(close.len())
                    .position(|w| w.eq_ignore_ascii_case(close.as_bytes()))
                    .unwrap_or(lower_rest.len());
                continue;
            }
            depth += 1;
            max = max.max(depth);
        }
    }
    max
}

/// The HTML standard's "prescan a byte stream to determine its encoding",
/// reduced to what matters: the charset of the first `<meta charset>` or
/// `<meta http-equiv="Content-Type" content="…; charset=…">`. Other tags
/// are skipped with their attributes, so `<script charset="gbk">` on a
/// UTF-8 page does not count; comments are skipped whole.
fn prescan_charset(bytes: &[u8]) -> Option<&'static Encoding> {
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"<!--") {
            // "<!-->" closes at once: the end search may overlap the start.
            i += find(&rest[2..], b"-->").map_or(bytes.len(), |end| end + 2 + 3);
        } else if starts_with_ignore_case(rest, b"<meta")
            && rest.get(5).is_some_and(|&b| b.is_ascii_whitespace() || b == b'/')
        {
            i += 5;
            let mut charset = None;
            let mut http_equiv_content_type = false;
            let mut content_charset = None;
            let mut seen = HashSet::new();
            while let Some((name, value, next)) = next_attribute(bytes, i) {
                i = next;
                if !seen.insert(name.clone()) {
                    continue;
                }
                match name.as_str() {
                    "charset" => charset = Some(value),
                    "http-equiv" => http_equiv_content_type = value.eq_ignore_ascii_case("content-type"),
                    "content" => content_charset = charset_from_content(&value),
                    _ => {}
                }
            }
            let label = charset.or(if http_equiv_content_type { content_charset } else { None });
            if let Some(encoding) = label.and_then(|l| Encoding::for_label(l.trim().as_bytes())) {
                // The standard's fix-ups: a page cannot really be UTF-16 if
                // its ASCII meta tag was readable, and x-user-defined is
                // windows-1252 for this purpose.
                // The "replacement" encoding (labels of encodings that are
                // unsafe to decode) would turn the page into one U+FFFD: it is
                // better to sniff.
                return match encoding.name() {
                    "UTF-16LE" | "UTF-16BE" => Some(encoding_rs::UTF_8),
                    "x-user-defined" => Some(encoding_rs::WINDOWS_1252),
                    "replacement" => None,
                    _ => Some(encoding),
                };
            }
        } else if rest.len() > 1 && rest[0] == b'<' && (rest[1].is_ascii_alphabetic() || rest[1] == b'/') {
            // Any other tag: skip its name, then its attributes.
            i += 1;
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                i += 1;
            }
            while let Some((_, _, next)) = next_attribute(bytes, i) {
                i = next;
            }
        } else if rest.starts_with(b"<!") || rest.starts_with(b"<?") {
            i += find(rest, b">").map_or(bytes.len(), |end| end + 1);
        } else {
            i += 1;
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// The standard's "get an attribute": the next attribute at `i` (name
/// lowercased, value) and the position after it, or None at the end of the
/// tag (after which the position is past the `>`, as the caller will skip on).
fn next_attribute(bytes: &[u8], mut i: usize) -> Option<(String, String, usize)> {
    while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
        i += 1;
    }
    if i >= bytes.len() || bytes[i] == b'>' {
        return None;
    }
    let mut name = Vec::new();
    while i < bytes.len() {
        let b = bytes[i];
        if (b == b'=' && !name.is_empty()) || b.is_ascii_whitespace() || b == b'/' || b == b'>' {
            break;
        }
        name.push(b.to_ascii_lowercase());
        i += 1;
    }
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    let name = String::from_utf8_lossy(&name).into_owned();
    if bytes.get(i) != Some(&b'=') {
        return Some((name, String::new(), i));
    }
    i += 1;
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    let mut value = Vec::new();
    match bytes.get(i) {
        Some(&quote @ (b'"' | b'\'')) => {
            i += 1;
            while i < bytes.len() && bytes[i] != quote {
                value.push(bytes[i].to_ascii_lowercase());
                i += 1;
            }
            i += 1;
        }
        _ => {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                value.push(bytes[i].to_ascii_lowercase());
                i += 1;
            }
        }
    }
    Some((name, String::from_utf8_lossy(&value).into_owned(), i.min(bytes.len())))
}

/// The standard's "extract a character encoding from a meta element":
/// the value after `charset=` in `text/html; charset=gb2312`.
fn charset_from_content(content: &str) -> Option<String> {
    let lower = content.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("charset") {
        let after = lower[from + at + "charset".len()..].trim_start();
        if let Some(value) = after.strip_prefix('=') {
            let value = value.trim_start();
            let value = match value.chars().next() {
                Some(q @ ('"' | '\'')) => value[1..].split(q).next()?,
                _ => value.split(|c: char| c == ';' || c.is_ascii_whitespace()).next()?,
            };
            return (!value.is_empty()).then(|| value.to_owned());
        }
        from += at + "charset".len();
    }
    None
}

/// Elements whose content is never text of the page.
const DROPPED_TAGS: &[&str] = &[
    "head", "script", "style", "noscript", "template", "iframe", "frame", "frameset", "object", "embed", "svg",
    "canvas", "audio", "video", "picture", "map", "input", "select", "option", "optgroup", "datalist", "textarea",
    "button", "nav", "aside", "menu", "dialog", "math",
];

/// ARIA roles of navigation chrome.
const CHROME_ROLES: &[&str] =
    &["navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar", "toolbar", "dialog"];

/// Words that, as a word of an element's id or class, mark it as chrome
/// rather than the article: "site-nav", "mainMenu", "sidebar_left",
/// "share-box", "comment-list", "ad-slot"…
const CHROME_WORDS: &[&str] = &[
    "nav",
    "navbar",
    "navbox",
    "navigation",
    "menu",
    "menubar",
    "submenu",
    "sidebar",
    "breadcrumb",
    "breadcrumbs",
    "crumbs",
    "header",
    "masthead",
    "topbar",
    "footer",
    "foot",
    "copyright",
    "share",
    "sharing",
    "social",
    "comment",
    "comments",
    "advert",
    "advertisement",
    "ad",
    "ads",
    "banner",
    "sponsor",
    "cookie",
    "cookies",
    "popup",
    "modal",
    "toolbar",
    "toc",
    "pagination",
    "pager",
    "related",
    "recommend",
    "login",
    "signin",
    "subscribe",
    "newsletter",
    "editsection",
    "noprint",
    "skip",
    "jump",
];

/// Elements that break a paragraph (before and after them).
const BLOCK_TAGS: &[&str] = &[
    "address",
    "article",
    "blockquote",
    "body",
    "center",
    "details",
    "dir",
    "div",
    "dl",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "foot",
    "form",
    "header",
    "hgroup",
    "hr",
    "html",
    "legend",
    "main",
    "ol",
    "p",
    "section",
    "summary",
    "table",
    "ul",
];

/// Text of the page, as found by one walk over the chosen root.
fn extract(html: &Html) -> ParsedDocument {
    let root = html.tree.root();
    let head = find_element(root, |name, _| name == "head");
    let title = head.and_then(|h| find_element(h, |name, _| name == "title")).map(|t| collapse(&text_content(t)));
    let title = title.filter(|t| !t.is_empty());
    let body = find_element(root, |name, _| name == "body").unwrap_or(root);
    let main = main_content(body);
    let protected = protected_nodes(html, main);

    let mut walker = Walker::new(main, protected);
    if let Some(title) = &title {
        walker.out.paragraph(title, false);
    }
    walker.walk(main);
    let (sections, first_h1) = walker.out.finish();
    ParsedDocument { title: title.or(first_h1), sections }
}

fn element_name<'a>(node: &NodeRef<'a, Node>) -> Option<&'a str> {
    node.value().as_element().map(|e| e.name())
}

/// The first element (in document order) under `root` that `matches` its
/// name and node.
fn find_element<'a>(
    root: NodeRef<'a, Node>,
    matches: impl Fn(&str, &scraper::node::Element) -> bool,
) -> Option<NodeRef<'a, Node>> {
    root.descendants().find(|n| n.value().as_element().is_some_and(|e| matches(e.name(), e)))
}

fn is_role(element: &scraper::node::Element, roles: &[&str]) -> bool {
    element
        .attr("role")
        .is_some_and(|r| r.split_ascii_whitespace().any(|r| roles.iter().any(|x| r.eq_ignore_ascii_case(x))))
}

/// Where the main text is: the page's `<main>` (or `role=main`), else its
/// only top-level `<article>`, else the whole body. A marked region that
/// holds less than a quarter of the body's text is a misuse of the markup,
/// not the article, and is ignored.
fn main_content(body: NodeRef<'_, Node>) -> NodeRef<'_, Node> {
    let body_len = visible_len(body);
    let enough = |n: NodeRef<'_, Node>| visible_len(n) * 4 >= body_len;
    if let Some(main) = find_element(body, |name, e| name == "main" || is_role(e, &["main"]))
        && enough(main)
    {
        return main;
    }
    let articles: Vec<_> = body
        .descendants()
        .filter(|n| element_name(n) == Some("article"))
        .filter(|n| !n.ancestors().any(|a| element_name(&a) == Some("article")))
        .take(2)
        .collect();
    if let [article] = articles[..]
        && enough(article)
    {
        return article;
    }
    body
}

/// Characters of text under `node`, leaving out what is never text.
fn visible_len(node: NodeRef<'_, Node>) -> usize {
    let mut len = 0;
    let mut cursor = Cursor::new(node);
    while let Some((n, entering)) = cursor.next() {
        if !entering {
            continue;
        }
        match n.value() {
            Node::Element(e) if DROPPED_TAGS.contains(&e.name()) => cursor.skip_children(),
            Node::Text(t) => len += t.trim().chars().count(),
            _ => {}
        }
    }
    len
}

/// Nodes that must not be dropped as chrome even if their class says so:
/// the chosen root's ancestors, and every ancestor of a `<h1>`, `<main>` or
/// `<article>` (a `<div class="header">` that holds the article's title is
/// part of the article). Computed in one pass, marking ancestors upwards
/// until one already marked, so the cost stays linear in the page.
fn protected_nodes(html: &Html, main: NodeRef<'_, Node>) -> HashSet<NodeId> {
    let mut protected = HashSet::new();
    let mut mark = |node: NodeRef<'_, Node>| {
        let mut current = Some(node);
        while let Some(n) = current {
            if !protected.insert(n.id()) {
                break;
            }
            current = n.parent();
        }
    };
    mark(main);
    for node in html.tree.nodes() {
        if let Some(e) = node.value().as_element()
            && (matches!(e.name(), "h1" | "main" | "article") || is_role(e, &["main"]))
        {
            mark(node);
        }
    }
    protected
}

/// Iterative depth-first traversal (the tree of a hostile page can be far
/// deeper than the stack): yields each node on entry (`true`) and on exit
/// (`false`), and can be told to skip the children of the node just entered.
struct Cursor<'a> {
    root: NodeRef<'a, Node>,
    next: Option<(NodeRef<'a, Node>, bool)>,
    last: Option<NodeRef<'a, Node>>,
}

impl<'a> Cursor<'a> {
    fn new(root: NodeRef<'a, Node>) -> Self {
        Self { root, next: Some((root, true)), last: None }
    }

    /// Skips the children of the node last entered: its exit comes next.
    fn skip_children(&mut self) {
        if let Some(n) = self.last {
            self.next = Some((n, false));
        }
    }

    fn next(&mut self) -> Option<(NodeRef<'a, Node>, bool)> {
        let (node, entering) = self.next?;
        self.last = Some(node);
        self.next = if entering {
            Some(match node.first_child() {
                Some(child) => (child, true),
                None => (node, false),
            })
        } else if node == self.root {
            None
        } else if let Some(sibling) = node.next_sibling() {
            Some((sibling, true))
        } else {
            node.parent().map(|p| (p, false))
        };
        Some((node, entering))
    }
}

/// Whether an element is left out of the text. `protected` elements hold
/// the article (see [`protected_nodes`]): only what is never text is dropped
/// from them, not what merely looks like chrome or is hidden (pages hide
/// their whole body until a script has run).
fn is_dropped(e: &scraper::node::Element, in_sectioning: bool, protected: bool) -> bool {
    let name = e.name();
    if DROPPED_TAGS.contains(&name) {
        return true;
    }
    if protected {
        return false;
    }
    if e.attr("hidden").is_some()
        || e.attr("aria-hidden").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || e.attr("style").is_some_and(hides)
    {
        return true;
    }
    // A header or footer inside an article or section belongs to it (its
    // byline, its notes); outside one it is the page's.
    if matches!(name, "header" | "footer") && !in_sectioning {
        return true;
    }
    if is_role(e, CHROME_ROLES) {
        return true;
    }
    e.id().is_some_and(has_chrome_word) || e.attr("class").is_some_and(has_chrome_word)
}

/// `style="display:none"` or `visibility:hidden`.
fn hides(style: &str) -> bool {
    let style: String = style.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    style.contains("display:none") || style.contains("visibility:hidden")
}

/// Splits ids and class lists into words ("mw-editsection", "headtopNav",
/// "sidebar_left2" → mw, editsection, headtop, nav, sidebar, left) and
/// looks them up in [`CHROME_WORDS`].
fn has_chrome_word(value: &str) -> bool {
    let mut word = String::new();
    let mut prev_lower = false;
    let mut found = false;
    let mut check = |word: &mut String| {
        let trimmed = word.trim_end_matches(|c: char| c.is_ascii_digit());
        if !trimmed.is_empty() && CHROME_WORDS.contains(&trimmed) {
            found = true;
        }
        word.clear();
    };
    for c in value.chars() {
        if !c.is_alphanumeric() {
            check(&mut word);
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower {
            check(&mut word);
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        word.extend(c.to_lowercase());
    }
    check(&mut word);
    found
}

fn text_content(node: NodeRef<'_, Node>) -> String {
    let mut out = String::new();
    for n in node.descendants() {
        if let Node::Text(t) = n.value() {
            out.push_str(t);
        }
    }
    out
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_html_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

/// The walk over the main content, writing into an [`Outline`].
struct Walker<'a> {
    root: NodeRef<'a, Node>,
    protected: HashSet<NodeId>,
    out: Outline,
    /// The paragraph being written.
    line: String,
    /// The prefix ("- ", "2. ") of the list item whose text has not begun.
    prefix: String,
    /// Open list items and table rows: their paragraphs are joined to their
    /// neighbours by one newline.
    tight: usize,
    /// Whitespace was seen since the last character written.
    space: bool,
    /// A heading being read: its level and text.
    heading: Option<(u8, NodeId, String)>,
    pre: usize,
    /// Open lists: ordered, and the number of the last item.
    lists: Vec<(bool, u32)>,
    /// Open table rows: how many cells each has had so far.
    rows: Vec<usize>,
    /// Open table cells: inside one, blocks and nested tables are inline.
    cells: usize,
    /// Open `article`/`section`/`main` elements.
    sectioning: usize,
}

impl<'a> Walker<'a> {
    fn new(root: NodeRef<'a, Node>, protected: HashSet<NodeId>) -> Self {
        Self {
            root,
            protected,
            out: Outline::new(),
            line: String::new(),
            prefix: String::new(),
            tight: 0,
            space: false,
            heading: None,
            pre: 0,
            lists: Vec::new(),
            rows: Vec::new(),
            cells: 0,
            sectioning: 0,
        }
    }

    fn walk(&mut self, root: NodeRef<'a, Node>) {
        let mut cursor = Cursor::new(root);
        // Sectioning elements the root is inside of count too.
        self.sectioning = root.ancestors().filter(is_sectioning).count();
        // A dropped element's exit follows its entry at once (its children
        // are skipped); this remembers which exit to ignore.
        let mut dropped = None;
        while let Some((node, entering)) = cursor.next() {
            match node.value() {
                Node::Text(t) if entering => self.text(t),
                Node::Element(e) if entering => {
                    let is_root = node == self.root;
                    let protected = is_root || self.protected.contains(&node.id());
                    if !is_root && is_dropped(e, self.sectioning > 0, protected) {
                        cursor.skip_children();
                        dropped = Some(node.id());
                        continue;
                    }
                    self.open(node, e.name());
                }
                Node::Element(e) if dropped.take_if(|id| *id == node.id()).is_none() => self.close(node, e.name()),
                _ => {}
            }
        }
        self.flush();
    }

    fn text(&mut self, text: &str) {
        if let Some((_, _, heading)) = &mut self.heading {
            heading.push_str(text);
            return;
        }
        if self.pre > 0 {
            self.start_line();
            self.line.push_str(text);
            return;
        }
        for c in text.chars() {
            if is_html_space(c) {
                self.space = true;
                continue;
            }
            self.start_line();
            if self.space && !self.line.is_empty() && !self.line.ends_with(['\n', ' ']) {
                self.line.push(' ');
            }
            self.space = false;
            self.line.push(c);
        }
    }

    /// Writes the list item's prefix before the first text of the item.
    fn start_line(&mut self) {
        if self.line.is_empty() && !self.prefix.is_empty() {
            self.line = std::mem::take(&mut self.prefix);
        }
    }

    /// Ends the paragraph being written.
    fn flush(&mut self) {
        let text =
            if self.pre > 0 { self.line.trim_matches('\n') } else { self.line.trim_end().trim_start_matches('\n') };
        self.out.paragraph(text, self.tight > 0);
        self.line.clear();
        self.space = false;
    }

    /// A line break inside the paragraph, or a space inside a table cell.
    fn soft_break(&mut self) {
        if self.cells > 0 {
            self.space = true;
        } else {
            while self.line.ends_with(' ') {
                self.line.pop();
            }
            self.line.push('\n');
            self.space = false;
        }
    }

    fn open(&mut self, node: NodeRef<'a, Node>, name: &str) {
        if is_sectioning(&node) {
            self.sectioning += 1;
        }
        if let Some((_, _, heading)) = &mut self.heading {
            if name == "br" {
                heading.push(' ');
            }
            return;
        }
        // Inside a table cell, everything that would break a line is a space,
        // so that a row stays one line.
        if self.cells > 0 && !matches!(name, "td" | "th") && breaks_line(name) {
            self.space = true;
            return;
        }
        match name {
            "br" => self.soft_break(),
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                self.flush();
                let level = name.as_bytes()[1] - b'0';
                self.heading = Some((level, node.id(), String::new()));
            }
            "pre" => {
                self.flush();
                self.pre += 1;
            }
            "li" | "dt" | "dd" => {
                self.flush();
                self.tight += 1;
                let depth = self.lists.len().saturating_sub(1);
                let marker = match self.lists.last_mut() {
                    Some((true, n)) if name == "li" => {
                        *n = n.saturating_add(1);
                        format!("{n}. ")
                    }
                    _ if name == "li" => "- ".to_owned(),
                    _ => String::new(),
                };
                self.prefix = format!("{:indent$}{marker}", "", indent = depth.min(8) * 2);
            }
            "ul" | "ol" => {
                self.flush();
                if self.lists.is_empty() {
                    self.out.end_block();
                }
                let start = node.value().as_element().and_then(|e| e.attr("start")).and_then(|s| s.trim().parse().ok());
                self.lists.push((name == "ol", start.map_or(0, |s: u32| s.saturating_sub(1))));
            }
            "tr" => {
                self.flush();
                self.tight += 1;
                self.rows.push(0);
            }
            "td" | "th" => {
                // The first cell of a row starts the line; the others are
                // joined to it with " | ". Cells of nested tables are inline.
                let cells_before = if self.cells == 0 { self.rows.last().copied() } else { None };
                match cells_before {
                    Some(n) => {
                        if n > 0 {
                            self.start_line();
                            self.line.push_str(" | ");
                            self.space = false;
                        }
                        if let Some(count) = self.rows.last_mut() {
                            *count += 1;
                        }
                    }
                    None => self.space = true,
                }
                self.cells += 1;
            }
            "caption" => self.flush(),
            "table" => {
                self.flush();
                self.out.end_block();
            }
            _ if BLOCK_TAGS.contains(&name) && self.pre == 0 => self.flush(),
            _ => {}
        }
    }

    fn close(&mut self, node: NodeRef<'a, Node>, name: &str) {
        if is_sectioning(&node) {
            self.sectioning = self.sectioning.saturating_sub(1);
        }
        if let Some((level, id, text)) = &self.heading {
            if *id == node.id() {
                let (level, text) = (*level, collapse(text));
                self.heading = None;
                self.out.heading(level, &text);
            }
            return;
        }
        if self.cells > 0 && !matches!(name, "td" | "th") && breaks_line(name) {
            self.space = true;
            return;
        }
        match name {
            "pre" if self.pre > 0 => {
                self.flush();
                self.pre -= 1;
            }
            "li" | "dt" | "dd" => {
                self.flush();
                self.prefix.clear();
                self.tight = self.tight.saturating_sub(1);
            }
            "caption" => self.flush(),
            "ul" | "ol" => {
                self.flush();
                self.lists.pop();
                if self.lists.is_empty() {
                    self.out.end_block();
                }
            }
            "table" => {
                self.flush();
                self.out.end_block();
            }
            "tr" => {
                self.flush();
                self.rows.pop();
                self.tight = self.tight.saturating_sub(1);
            }
            "td" | "th" => {
                self.cells = self.cells.saturating_sub(1);
                self.space = true;
            }
            _ if BLOCK_TAGS.contains(&name) && self.pre == 0 => self.flush(),
            _ => {}
        }
    }
}

/// Elements that start a new line or paragraph.
fn breaks_line(name: &str) -> bool {
    BLOCK_TAGS.contains(&name)
        || matches!(
            name,
            "br" | "li" | "dt" | "dd" | "tr" | "caption" | "pre" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6"
        )
}

fn is_sectioning(node: &NodeRef<'_, Node>) -> bool {
    node.value()
        .as_element()
        .is_some_and(|e| matches!(e.name(), "article" | "section" | "main") || is_role(e, &["main"]))
}

/// Builds sections from a stream of headings and paragraphs: a heading of
/// level N closes the section before it and pops headings of level N or
/// deeper off the path. Each section's text starts with its heading, so the
/// heading's words are part of the text (as in a Markdown section), and
/// paragraphs are separated by a blank line; "tight" paragraphs (list items,
/// table rows) follow one another on the next line.
pub(super) struct Outline {
    stack: Vec<(u8, String)>,
    sections: Vec<Section>,
    text: String,
    last_tight: bool,
    first_h1: Option<String>,
}

impl Outline {
    pub(super) fn new() -> Self {
        Self { stack: Vec::new(), sections: Vec::new(), text: String::new(), last_tight: false, first_h1: None }
    }

    /// Starts a section under heading `text` of `level` (1 = outermost).
    /// An empty heading is ignored, an overlong one is kept as a paragraph.
    pub(super) fn heading(&mut self, level: u8, text: &str) {
        let text = collapse(text);
        if text.is_empty() {
            return;
        }
        if text.chars().count() > MAX_HEADING_CHARS {
            self.paragraph(&text, false);
            return;
        }
        self.end_section();
        while self.stack.last().is_some_and(|(l, _)| *l >= level) {
            self.stack.pop();
        }
        if level == 1 && self.first_h1.is_none() {
            self.first_h1 = Some(text.clone());
        }
        self.stack.push((level, text.clone()));
        self.text = text;
        self.last_tight = false;
    }

    /// Adds a paragraph to the current section.
    pub(super) fn paragraph(&mut self, text: &str, tight: bool) {
        if text.trim().is_empty() {
            return;
        }
        if !self.text.is_empty() {
            self.text.push_str(if tight && self.last_tight { "\n" } else { "\n\n" });
        }
        self.text.push_str(text);
        self.last_tight = tight;
    }

    /// Ends a run of tight paragraphs: a list or table that follows another
    /// is separated from it by a blank line.
    pub(super) fn end_block(&mut self) {
        self.last_tight = false;
    }

    fn end_section(&mut self) {
        if !self.text.trim().is_empty() {
            let headings = self.stack.iter().map(|(_, h)| h.clone()).collect();
            self.sections.push(Section { headings, text: std::mem::take(&mut self.text) });
        }
        self.text.clear();
    }

    /// The sections, and the first level-1 heading (a title of last resort).
    pub(super) fn finish(mut self) -> (Vec<Section>, Option<String>) {
        self.end_section();
        (self.sections, self.first_h1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(html: &[u8]) -> ParsedDocument {
        parse(html, &mut |_| {}).unwrap_or_else(|e| panic!("parse failed: {e:?}"))
    }

    fn all_text(doc: &ParsedDocument) -> String {
        doc.sections.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("\n\n")
    }

    fn paths(doc: &ParsedDocument) -> Vec<String> {
        doc.sections.iter().map(|s| s.headings.join(" > ")).collect()
    }

    #[test]
    fn scripts_styles_forms_and_navigation_are_left_out() {
        let page = r#"<!DOCTYPE html><html><head><title>Site - Article</title>
            <style>.x { color: red } STYLE_TEXT</style><script>var SCRIPT_TEXT = 1;</script></head>
            <body class="page has-menu">
              <header class="site-header"><a href="/">HEADER_TEXT</a></header>
              <nav><ul><li>NAV_TEXT</li></ul></nav>
              <div id="breadcrumbs">BREADCRUMB_TEXT</div>
              <div class="mainMenu">MENU_TEXT</div>
              <div role="navigation">ROLE_TEXT</div>
              <div class="content">
                <h1>The article</h1>
                <p>First paragraph of the article.</p>
                <noscript>NOSCRIPT_TEXT</noscript>
                <form><input value="INPUT_TEXT"><button>BUTTON_TEXT</button><select><option>OPTION_TEXT</option></select></form>
                <div style="display: none">HIDDEN_TEXT</div>
                <p>Second paragraph, with <a href="x">a link</a> and <b>bold</b> words.</p>
                <div class="share-box">SHARE_TEXT</div>
                <div id="comments">COMMENT_TEXT</div>
              </div>
              <aside>ASIDE_TEXT</aside>
              <footer>FOOTER_TEXT</footer>
              <template><p>TEMPLATE_TEXT</p></template>
              <svg><text>SVG_TEXT</text></svg>
            </body></html>"#;
        let doc = parse_ok(page.as_bytes());
        let text = all_text(&doc);
        for absent in [
            "STYLE",
            "SCRIPT",
            "HEADER",
            "NAV",
            "BREADCRUMB",
            "MENU",
            "ROLE",
            "NOSCRIPT",
            "INPUT",
            "BUTTON",
            "OPTION",
            "HIDDEN",
            "SHARE",
            "COMMENT",
            "ASIDE",
            "FOOTER",
            "TEMPLATE",
            "SVG",
        ] {
            assert!(!text.contains(&format!("{absent}_TEXT")), "{absent} is in {text:?}");
        }
        assert_eq!(doc.title.as_deref(), Some("Site - Article"));
        assert_eq!(
            text,
            "Site - Article\n\nThe article\n\nFirst paragraph of the article.\n\n\
             Second paragraph, with a link and bold words."
        );
    }

    #[test]
    fn headings_make_paths_and_blocks_make_paragraphs() {
        let page = "<html><body>
            <p>intro</p>
            <h1>第一章 <small>总则</small></h1><p>one</p>
            <h2>1.1 背景</h2><p>two<br>line two</p><blockquote>quoted</blockquote>
            <h3>1.1.1 Detail</h3><div>three <span>inline</span></div>
            <h2>1.2 Next</h2><ul><li>apple</li><li>banana<ul><li>inner</li></ul></li></ul><ol start=\"3\"><li>third</li><li>fourth</li></ol>
            <h1>第二章</h1><pre>  keep   this\n    indented</pre>
            <h2></h2><p>after an empty heading</p>
            </body></html>";
        let doc = parse_ok(page.as_bytes());
        assert_eq!(doc.title.as_deref(), Some("第一章 总则"), "without <title>, the first h1");
        assert_eq!(
            paths(&doc),
            [
                "",
                "第一章 总则",
                "第一章 总则 > 1.1 背景",
                "第一章 总则 > 1.1 背景 > 1.1.1 Detail",
                "第一章 总则 > 1.2 Next",
                "第二章"
            ]
        );
        let texts: Vec<&str> = doc.sections.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "intro",
                "第一章 总则\n\none",
                "1.1 背景\n\ntwo\nline two\n\nquoted",
                "1.1.1 Detail\n\nthree inline",
                "1.2 Next\n\n- apple\n- banana\n  - inner\n\n3. third\n4. fourth",
                "第二章\n\n  keep   this\n    indented\n\nafter an empty heading",
            ]
        );
    }

    #[test]
    fn tables_are_rows_of_cells_and_entities_are_decoded() {
        let page = "<html><head><title>T &amp; T</title></head><body>
            <p>before &lt;tag&gt; &copy; &#x4E2D;&#25991; &nbsp;x</p>
            <table><caption>Prices</caption>
              <tr><th>Item</th><th>Price</th></tr>
              <tr><td><p>Tea</p><p>green</p></td><td>¥5</td></tr>
              <tr><td>Nested</td><td><table><tr><td>a</td><td>b</td></tr></table></td></tr>
            </table><p>after</p></body></html>";
        let doc = parse_ok(page.as_bytes());
        assert_eq!(doc.title.as_deref(), Some("T & T"));
        assert_eq!(
            all_text(&doc),
            "T & T\n\nbefore <tag> © 中文 \u{a0}x\n\nPrices\n\nItem | Price\nTea green | ¥5\nNested | a b\n\nafter"
        );
    }

    #[test]
    fn a_gbk_page_is_decoded_by_its_meta_charset() {
        let page = "<html><head><meta charset=\"gbk\"><title>火星 - 维基百科</title></head>\
                    <body><h1>火星</h1><p>火星是太阳系的八大行星中第二小的行星。</p></body></html>";
        let (bytes, _, unmappable) = encoding_rs::GBK.encode(page);
        assert!(!unmappable);
        assert!(std::str::from_utf8(&bytes).is_err(), "the test page really is GBK");
        let doc = parse_ok(&bytes);
        assert_eq!(doc.title.as_deref(), Some("火星 - 维基百科"));
        assert!(all_text(&doc).contains("火星是太阳系的八大行星中第二小的行星。"));
        assert_eq!(paths(&doc), ["", "火星"]);
    }

    #[test]
    fn a_gb2312_page_is_decoded_by_its_http_equiv_meta() {
        let page = "<html><head><!-- <meta charset=\"big5\"> is only a comment -->\
                    <meta http-equiv=\"Content-Type\" content=\"text/html; charset=gb2312\">\
                    <title>测试</title></head><body><p>中文网页的正文，简体字。</p></body></html>";
        let (bytes, _, _) = encoding_rs::GBK.encode(page);
        assert_eq!(prescan_charset(&bytes), Some(encoding_rs::GBK));
        let doc = parse_ok(&bytes);
        assert!(all_text(&doc).contains("中文网页的正文，简体字。"), "{doc:?}");
    }

    #[test]
    fn a_charset_on_a_script_does_not_decide_the_page() {
        let page = "<html><head><script type=\"text/javascript\" charset=\"gbk\" src=\"x.js\"></script>\
                    <title>宇航员在太空中喝酒</title></head><body><p>翱翔于距地球数千公里的太空中</p></body></html>";
        assert_eq!(prescan_charset(page.as_bytes()), None);
        let doc = parse_ok(page.as_bytes());
        assert!(all_text(&doc).contains("翱翔于距地球数千公里的太空中"));
        // Valid UTF-8 wins over a legacy label (pages re-saved as UTF-8).
        let relabelled = page.replace("<head>", "<head><meta charset=\"gbk\">");
        assert!(all_text(&parse_ok(relabelled.as_bytes())).contains("翱翔于距地球数千公里的太空中"));
    }

    #[test]
    fn an_unlabelled_gbk_page_is_sniffed() {
        let page = "<html><body><p>早期计算机的字符编码基本上都是六位。这是一段足够长的中文文本，用来让检测器做出判断。\
                    中国大陆的网页曾经大多使用国标码。</p></body></html>";
        let (bytes, _, _) = encoding_rs::GBK.encode(page);
        assert!(all_text(&parse_ok(&bytes)).contains("早期计算机的字符编码基本上都是六位。"));
    }

    #[test]
    fn the_main_element_is_preferred_and_chrome_classes_do_not_drop_the_article() {
        let page = "<html><body><div class=\"sidebar\">SIDE</div>\
                    <main class=\"layout-with-menu\"><h1>Kept</h1><p>Main text of the page, long enough to count.</p></main>\
                    <div>OUTSIDE</div></body></html>";
        let text = all_text(&parse_ok(page.as_bytes()));
        assert_eq!(text, "Kept\n\nMain text of the page, long enough to count.");
        let page = "<html><body><div class=\"header\"><h1>Title in a header div</h1></div><div class=\"menu\">MENU</div>\
                    <p>Body text.</p></body></html>";
        assert_eq!(all_text(&parse_ok(page.as_bytes())), "Title in a header div\n\nBody text.");
        // One article, with its own header (a byline) and footer.
        let page = "<html><body><header>SITE</header><article><header><h2>Post</h2><p>by me</p></header>\
                    <p>The post itself, which is most of the page.</p><footer>notes</footer></article><footer>SITE</footer></body></html>";
        assert_eq!(
            all_text(&parse_ok(page.as_bytes())),
            "Post\n\nby me\n\nThe post itself, which is most of the page.\n\nnotes"
        );
    }

    #[test]
    fn chrome_words_are_whole_words_of_ids_and_classes() {
        for chrome in
            ["nav", "site-nav", "mainMenu", "sidebar_left2", "mw-editsection", "share-box", "ad", "headtopNav"]
        {
            assert!(has_chrome_word(chrome), "{chrome}");
        }
        for content in ["navigator-article", "content", "shareholders", "reader", "loaded", "mw-parser-output", "head"]
        {
            assert!(!has_chrome_word(content), "{content}");
        }
    }

    #[test]
    fn deeply_nested_pages_are_refused_quickly() {
        let depth = 100_000;
        let page = format!(
            "<html><body>{}deep text{}</body></html>",
            "<div><span>".repeat(depth),
            "</span></div>".repeat(depth)
        );
        let started = std::time::Instant::now();
        let error = parse(page.as_bytes(), &mut |_| {}).unwrap_err();
        assert_eq!(error.kind, ParseErrorKind::TooLarge, "{error:?}");
        // A guard against a hang, not a speed test: unrefused, html5ever takes
        // more than ten minutes on this page.
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "took {:?}", started.elapsed());
    }

    #[test]
    fn pages_just_under_the_depth_limit_are_read_without_recursion() {
        // The walk is iterative: a page as deep as allowed is read whole.
        let depth = MAX_DEPTH / 2 - 4;
        let page = format!(
            "<html><body>{}deep text{}</body></html>",
            "<div><span>".repeat(depth),
            "</span></div>".repeat(depth)
        );
        assert!(all_text(&parse_ok(page.as_bytes())).contains("deep text"));
    }

    #[test]
    fn the_depth_estimate_ignores_flat_tags_scripts_and_comments() {
        assert_eq!(estimated_depth("<div><p>a<p>b<br><img src=x><div/></div>"), 1);
        assert_eq!(estimated_depth("<ul><li>a<li>b</ul><table><tr><td>x</table>"), 1);
        let script =
            format!("<script>var s = '{}';</script><!-- {} --><b>x</b>", "<div>".repeat(5000), "<div>".repeat(5000));
        assert_eq!(estimated_depth(&script), 1);
        assert_eq!(estimated_depth(&"<span>".repeat(3000)), 3000);
    }

    #[test]
    fn empty_pages_are_refused_and_overlong_headings_are_paragraphs() {
        assert_eq!(parse(b"  \n ", &mut |_| {}).unwrap_err().kind, ParseErrorKind::Empty);
        let long = "word ".repeat(100);
        let doc = parse_ok(format!("<h2>{long}</h2><p>x</p>").as_bytes());
        assert_eq!(paths(&doc), [""]);
        assert!(doc.sections[0].text.starts_with("word word"));
    }

    #[test]
    fn progress_is_reported() {
        let mut seen = Vec::new();
        parse(b"<p>x</p>", &mut |p| seen.push(p)).unwrap();
        assert_eq!(seen.last(), Some(&1.0));
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    }

    /// The corpus's html files: every expected phrase is in the text (after
    /// collapsing whitespace), every expected heading starts a heading of
    /// some section's path (Wikipedia headings carry an edit link).
    #[test]
    fn corpus_pages() {
        assert!(crate::import::corpus_check::check_format("html", parse, true) >= 2);
    }
}
