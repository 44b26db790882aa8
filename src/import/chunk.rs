//! Sections into chunks: the pieces that are stored, searched and cited.
//!
//! Two steps, both linear in the size of the document:
//!
//! - [`bound`] cleans and limits what a parser produced before anything is
//!   stored: titles and headings lose their control characters and are cut
//!   to [`MAX_HEADING_CHARS`], heading paths to [`MAX_HEADING_DEPTH`] levels
//!   and [`MAX_PATH_CHARS`], and the heading paths of all sections together
//!   to a small multiple of the document's text. Every chunk repeats its
//!   section's heading path, so without these limits a long heading over a
//!   long body multiplies the stored size.
//! - [`chunk`] cuts each section on its own (a chunk never spans two heading
//!   paths) into chunks of at most `size` characters. It follows the
//!   structure of the text: it ends a chunk at the last paragraph break that
//!   fits, else at the last sentence end (`。！？；…` and `.!?;` followed by
//!   white space), else at the last line break, else at the last space, and
//!   only then in the middle of a word (on a character boundary). Each chunk
//!   after the first in a section starts with up to `overlap` characters of
//!   the previous one, counted inside `size`.
//!
//! Chunks are slices of the section's text, trimmed of white space at both
//! ends: nothing is re-joined, so Markdown source and spacing stay as
//! written.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::decode::clean_text;
use super::parse::{ParsedDocument, Section};

/// The longest title or heading kept, in characters (with the `…` that marks a cut).
pub const MAX_HEADING_CHARS: usize = 200;
/// The most headings kept in one heading path.
pub const MAX_HEADING_DEPTH: usize = 8;
/// The longest heading path kept, in characters, separators included.
pub const MAX_PATH_CHARS: usize = 600;
/// Heading paths of all sections together may be this many characters
/// longer than twice the document's text. Only documents made mostly of
/// headings come near it; they get shorter paths (see [`bound`]).
const PATH_ALLOWANCE_CHARS: usize = 256 * 1024;
/// Joins the headings of a heading path.
const SEPARATOR: &str = " > ";
const SEPARATOR_CHARS: usize = 3;

/// Chunk size and overlap, in characters (`CHUNK_SIZE_CHARS`, `CHUNK_OVERLAP_CHARS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSettings {
    /// The longest chunk, overlap included. A size of 0 is taken as 1.
    pub size: usize,
    /// How much of the previous chunk a chunk repeats at its start. At most
    /// half of `size` is used, so that every chunk brings at least as much
    /// new text as it repeats and the stored text stays within about twice
    /// the input.
    pub overlap: usize,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        Self { size: 1000, overlap: 100 }
    }
}

/// One chunk of a document, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkText {
    /// The headings above it joined with `" > "` (empty without headings).
    pub heading_path: String,
    pub content: String,
}

/// Bounds what a parser produced before it is chunked and stored.
///
/// - The title and every heading lose their control characters (Unicode
///   `Cc`, e.g. NUL) and invisible format characters (zero-width space,
///   bidirectional overrides, BOM); their white-space runs become one space;
///   they are cut to [`MAX_HEADING_CHARS`] with a `…`. Empty headings are
///   dropped, and an empty title becomes `None`.
/// - A heading path deeper than [`MAX_HEADING_DEPTH`] keeps its seven
///   outermost headings and its innermost one (the section's own heading),
///   dropping those in between. A path longer than [`MAX_PATH_CHARS`] has its longest
///   headings cut until it fits.
/// - If the heading paths of all sections together are longer than twice the
///   document's text plus an allowance, every path is cut to one common
///   length that fits. This only happens to documents made of many tiny
///   sections under long headings, where the paths, repeated in every
///   chunk, would otherwise be most of what is stored.
/// - Section text gets Unix line ends and loses NUL characters (PostgreSQL
///   refuses them in TEXT).
pub fn bound(doc: ParsedDocument) -> ParsedDocument {
    let title = doc.title.map(|t| clean_line(&t, MAX_HEADING_CHARS)).filter(|t| !t.is_empty());
    let mut sections: Vec<Section> = doc
        .sections
        .into_iter()
        .map(|s| {
            // Moved, not copied, when there is nothing to clean.
            let cleaned = match clean_text(&s.text) {
                Cow::Owned(text) => Some(text),
                Cow::Borrowed(_) => None,
            };
            Section { headings: bound_path(&s.headings), text: cleaned.unwrap_or(s.text) }
        })
        .collect();
    limit_paths_in_total(&mut sections);
    ParsedDocument { title, sections }
}

/// `s` on one line: control and invisible format characters removed, white
/// space collapsed to single spaces and trimmed, and at most `max_chars`
/// characters, the last of them `…` when something was cut. It reads no
/// further into `s` than it needs.
pub(crate) fn clean_line(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    if max_chars == 0 {
        return out;
    }
    let mut chars = 0;
    let mut space = false;
    let mut cut = false;
    for c in s.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if c.is_control() || is_invisible(c) {
            continue;
        }
        let needed = 1 + usize::from(space);
        if chars + needed > max_chars {
            cut = true;
            break;
        }
        if space {
            out.push(' ');
            chars += 1;
            space = false;
        }
        out.push(c);
        chars += 1;
    }
    if cut {
        while chars > max_chars - 1 {
            out.pop();
            chars -= 1;
        }
        out.truncate(out.trim_end().len());
        out.push('…');
    }
    out
}

/// Format characters that have no visible form but can hide or reorder
/// text: zero-width space, direction marks, embeddings, overrides and
/// isolates, word joiner, and the BOM. Zero-width (non-)joiners stay; emoji
/// and Indic or Persian text need them.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// One section's heading path, cleaned and bounded (see [`bound`]).
fn bound_path(headings: &[String]) -> Vec<String> {
    // Only the headings that can be kept are cleaned, so a parser's absurdly
    // deep path costs no more than a normal one.
    let mut kept: Vec<String> = Vec::new();
    let mut iter = headings.iter();
    for h in iter.by_ref() {
        let h = clean_line(h, MAX_HEADING_CHARS);
        if !h.is_empty() {
            kept.push(h);
            if kept.len() == MAX_HEADING_DEPTH - 1 {
                break;
            }
        }
    }
    if let Some(innermost) = iter.rev().map(|h| clean_line(h, MAX_HEADING_CHARS)).find(|h| !h.is_empty()) {
        kept.push(innermost);
    }
    fit_path(&mut kept, MAX_PATH_CHARS);
    kept
}

fn path_chars(headings: &[String]) -> usize {
    headings.iter().map(|h| h.chars().count()).sum::<usize>() + SEPARATOR_CHARS * headings.len().saturating_sub(1)
}

/// Makes the joined `headings` at most `budget` characters long: the longest
/// headings are cut first, to one common length (so short headings stay
/// whole). When even one character per heading does not fit, the outermost
/// headings go first; the innermost one names the section.
fn fit_path(headings: &mut Vec<String>, budget: usize) {
    while headings.len() > 1 && headings.len() + SEPARATOR_CHARS * (headings.len() - 1) > budget {
        headings.remove(0);
    }
    if budget == 0 {
        headings.clear();
        return;
    }
    let n = headings.len();
    let room = budget - SEPARATOR_CHARS * n.saturating_sub(1);
    let mut lens: Vec<usize> = headings.iter().map(|h| h.chars().count()).collect();
    if lens.iter().sum::<usize>() <= room {
        return;
    }
    let cap = common_cap(&mut lens, room);
    for h in headings.iter_mut() {
        if h.chars().count() > cap {
            *h = clean_line(h, cap);
        }
    }
}

/// The largest `cap` with `Σ min(len, cap) <= room`, for `lens` whose sum is
/// more than `room` (sorts `lens`).
fn common_cap(lens: &mut [usize], room: usize) -> usize {
    lens.sort_unstable();
    let mut left = room;
    for (k, &len) in lens.iter().enumerate() {
        let others = lens.len() - k;
        if len * others > left {
            return left / others;
        }
        left -= len;
    }
    usize::MAX
}

/// The document-wide limit of [`bound`]: heading paths of all sections
/// together at most twice the text plus [`PATH_ALLOWANCE_CHARS`], by one
/// common cap on a path's length.
fn limit_paths_in_total(sections: &mut [Section]) {
    let text_chars: usize = sections.iter().map(|s| s.text.chars().count()).sum();
    let allowed = text_chars.saturating_mul(2).saturating_add(PATH_ALLOWANCE_CHARS);
    let mut lens: Vec<usize> = sections.iter().map(|s| path_chars(&s.headings)).collect();
    if lens.iter().sum::<usize>() <= allowed {
        return;
    }
    let cap = common_cap(&mut lens, allowed);
    for s in sections.iter_mut() {
        if path_chars(&s.headings) > cap {
            fit_path(&mut s.headings, cap);
        }
    }
}

/// Splits every section into chunks of at most `settings.size` characters
/// (see the module documentation for where chunks end).
pub fn chunk(doc: &ParsedDocument, settings: &ChunkSettings) -> Vec<ChunkText> {
    let mut out = Vec::new();
    for section in &doc.sections {
        let heading_path = section.headings.join(SEPARATOR);
        split(&section.text, settings, |piece| {
            out.push(ChunkText { heading_path: heading_path.clone(), content: section.text[piece.range()].to_owned() });
        });
    }
    out
}

/// One chunk of a text, as byte offsets into it: the chunk is
/// `start..end`, of which `start..fresh` repeats the end of the previous
/// chunk (the overlap, with the white space that followed it) and
/// `fresh..end` is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    start: usize,
    fresh: usize,
    end: usize,
}

impl Piece {
    fn range(self) -> std::ops::Range<usize> {
        self.start..self.end
    }
}

/// How well a place between two pieces of text suits the end of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Space,
    Line,
    Sentence,
    Paragraph,
}

/// A place where a chunk can end: the text before it ends at `end` (after a
/// non-white-space character), the text after it starts at `next` (a
/// non-white-space character); `end_chars` and `next_chars` count the
/// characters from where the scan began.
#[derive(Debug, Clone, Copy)]
struct Boundary {
    end: usize,
    end_chars: usize,
    next: usize,
    next_chars: usize,
    level: Level,
}

/// Where a [`scan`] stopped.
enum Stop {
    /// The text ended (trailing white space aside) at this offset, within the limit.
    End(usize),
    /// The limit was reached; the next character is at this offset.
    Full(usize),
}

/// The sentence end mark, if any, that the scan has just read (possibly
/// followed by closing quotes or brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    None,
    /// `。！？；…` and the like: the sentence ends right after them.
    Cjk,
    /// `.!?;`: the sentence ends only if white space follows.
    Latin,
}

fn is_cjk_end(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '；' | '…' | '｡' | '‼' | '⁇' | '⁈' | '⁉')
}

fn is_latin_end(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | ';')
}

/// Closing quotes and brackets, which stay with the sentence they end.
fn is_closer(c: char) -> bool {
    matches!(
        c,
        '"' | '\''
            | ')'
            | ']'
            | '}'
            | '”'
            | '’'
            | '」'
            | '』'
            | '）'
            | '］'
            | '｝'
            | '】'
            | '》'
            | '〉'
            | '〕'
            | '〗'
            | '〙'
            | '｣'
            | '»'
            | '›'
    )
}

/// Reads `text` forward from `from` (a non-white-space character), reporting
/// every [`Boundary`] whose `end` lies within `limit` characters of `from`,
/// and stops at the end of the text or at the first character beyond the
/// limit. A run of white space is read to its end to know what it holds
/// (paragraph break, line break or space), even past the limit.
fn scan(text: &str, from: usize, limit: usize, mut on: impl FnMut(Boundary)) -> Stop {
    let bytes = text.as_bytes();
    let mut at = from;
    let mut count = 0usize;
    let mut mark = Mark::None;
    while at < bytes.len() {
        // Letters and digits of ASCII are most of most texts and never end
        // anything: count them without decoding.
        if mark == Mark::None {
            let run =
                bytes[at..].iter().take(limit.saturating_sub(count)).take_while(|b| b.is_ascii_alphanumeric()).count();
            at += run;
            count += run;
            if at == bytes.len() {
                break;
            }
        }
        let (c, len) = char_at(text, at);
        if c.is_whitespace() {
            let (end, end_chars) = (at, count);
            let mut newlines = 0;
            loop {
                if at == bytes.len() {
                    return Stop::End(end);
                }
                let (w, len) = char_at(text, at);
                if !w.is_whitespace() {
                    break;
                }
                newlines += usize::from(w == '\n');
                count += 1;
                at += len;
            }
            let mut level = match newlines {
                0 => Level::Space,
                1 => Level::Line,
                _ => Level::Paragraph,
            };
            if mark != Mark::None {
                level = level.max(Level::Sentence);
            }
            mark = Mark::None;
            on(Boundary { end, end_chars, next: at, next_chars: count, level });
            if count >= limit {
                return Stop::Full(at);
            }
            continue;
        }
        if mark == Mark::Cjk && !is_cjk_end(c) && !is_latin_end(c) && !is_closer(c) {
            on(Boundary { end: at, end_chars: count, next: at, next_chars: count, level: Level::Sentence });
        }
        if count >= limit {
            return Stop::Full(at);
        }
        mark = if is_cjk_end(c) {
            Mark::Cjk
        } else if is_latin_end(c) && mark != Mark::Cjk {
            Mark::Latin
        } else if (is_closer(c) || is_latin_end(c)) && mark != Mark::None {
            mark
        } else {
            Mark::None
        };
        count += 1;
        at += len;
    }
    Stop::End(text.len())
}

/// The character at byte offset `at` (a character boundary before the end)
/// and its length in bytes.
#[inline]
fn char_at(text: &str, at: usize) -> (char, usize) {
    match text.as_bytes()[at] {
        b @ 0..0x80 => (char::from(b), 1),
        _ => text[at..].chars().next().map_or(('\u{FFFD}', 1), |c| (c, c.len_utf8())),
    }
}

/// The offset of the first non-white-space character at or after `from`.
fn first_non_space(text: &str, from: usize) -> Option<usize> {
    text[from..].char_indices().find(|(_, c)| !c.is_whitespace()).map(|(i, _)| from + i)
}

/// Cuts one section's text into [`Piece`]s, in order.
///
/// Each step scans forward from where the new text starts, for as many
/// characters as the chunk has room for after its overlap, and ends the
/// chunk at the best boundary found (the last one of the highest
/// [`Level`]), or hard at the limit when there is none. Every character is
/// read a bounded number of times: a chunk that ends early ends at a
/// boundary of a higher level than any after it in the same stretch, so at
/// most five chunks end within one stretch of at least `size / 2`
/// characters. The overlap is found by reading back at most `overlap`
/// characters.
fn split(text: &str, settings: &ChunkSettings, mut emit: impl FnMut(Piece)) {
    let size = settings.size.max(1);
    let overlap = settings.overlap.min(size / 2);
    let Some(mut fresh) = first_non_space(text, 0) else {
        return;
    };
    let mut start = fresh;
    // Characters in `start..fresh`; at most `overlap`, so at least half of
    // `size` is left for new text.
    let mut carried = 0;
    loop {
        let mut best: Option<Boundary> = None;
        let stop = scan(text, fresh, size - carried, |b| {
            if best.is_none_or(|x| b.level >= x.level) {
                best = Some(b);
            }
        });
        let (end, next, gap) = match (stop, best) {
            (Stop::End(end), _) => {
                emit(Piece { start, fresh, end });
                return;
            }
            (Stop::Full(_), Some(b)) => (b.end, b.next, b.next_chars - b.end_chars),
            (Stop::Full(at), None) => (at, at, 0),
        };
        emit(Piece { start, fresh, end });
        match overlap_start(text, start, end, overlap.saturating_sub(gap)) {
            Some((at, chars)) => {
                start = at;
                carried = chars + gap;
            }
            None => {
                start = next;
                carried = 0;
            }
        }
        fresh = next;
    }
}

/// Where the overlap taken from the chunk `start..end` begins, and how many
/// characters it has: at most `allowed`, never the whole chunk, starting at
/// the earliest sentence start within that tail, else the earliest word
/// start, else exactly `allowed` characters back, moved forward past the
/// rest of a word when that would cut one in a script with spaces (so a
/// Latin line without spaces gets no overlap, while Chinese text gets one
/// that starts anywhere).
fn overlap_start(text: &str, start: usize, end: usize, allowed: usize) -> Option<(usize, usize)> {
    let mut tail = end;
    let mut tail_chars = 0;
    for (i, _) in text[start..end].char_indices().rev() {
        if tail_chars == allowed || i == 0 {
            break;
        }
        tail = start + i;
        tail_chars += 1;
    }
    // Leading white space is not part of the overlap.
    while let Some(c) = text[tail..end].chars().next().filter(|c| c.is_whitespace()) {
        tail += c.len_utf8();
        tail_chars -= 1;
    }
    if tail_chars == 0 {
        return None;
    }
    // The scan starts a little before the tail (over the white space before
    // it and a few characters of what precedes that), so that a sentence or
    // word that starts right at the tail is recognised as such.
    let mut from = tail;
    let mut before = 0;
    let mut marks = 0;
    for c in text[start..tail].chars().rev() {
        if !c.is_whitespace() {
            if marks == 3 {
                break;
            }
            marks += 1;
        }
        from -= c.len_utf8();
        before += 1;
    }
    let (mut sentence, mut word) = (None, None);
    scan(&text[..end], from, before + tail_chars, |b| {
        if b.next < tail {
            return;
        }
        if b.level >= Level::Sentence && sentence.is_none() {
            sentence = Some(b);
        }
        if word.is_none() {
            word = Some(b);
        }
    });
    if let Some(b) = sentence.or(word) {
        return Some((b.next, before + tail_chars - b.next_chars));
    }
    // No sentence or word starts in the tail. In a script that separates
    // words with spaces, an overlap that starts inside a word is a fragment
    // that helps nobody, so it starts after that word (if anything is left);
    // in Chinese or Japanese any character boundary will do.
    if text[..tail].chars().next_back().is_some_and(in_spaced_word) {
        for c in text[tail..end].chars().take_while(|&c| in_spaced_word(c)) {
            tail += c.len_utf8();
            tail_chars -= 1;
        }
    }
    (tail_chars > 0).then_some((tail, tail_chars))
}

/// A letter or digit of a script that puts spaces between words (Latin,
/// Greek, Cyrillic, Arabic, Hangul, …), as opposed to Chinese, Japanese or
/// Thai, which do not.
fn in_spaced_word(c: char) -> bool {
    c.is_alphanumeric()
        && !matches!(c as u32,
            0x0E00..=0x0EFF | 0x1000..=0x109F | 0x1780..=0x17FF | 0x2E80..=0x9FFF | 0xF900..=0xFAFF
            | 0xFF00..=0xFFEF | 0x20000..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pieces(text: &str, size: usize, overlap: usize) -> Vec<Piece> {
        let mut out = Vec::new();
        split(text, &ChunkSettings { size, overlap }, |p| out.push(p));
        out
    }

    fn doc(sections: &[(&[&str], &str)]) -> ParsedDocument {
        ParsedDocument {
            title: None,
            sections: sections
                .iter()
                .map(|(h, t)| Section { headings: h.iter().map(|s| s.to_string()).collect(), text: t.to_string() })
                .collect(),
        }
    }

    /// Checks what every chunking must satisfy and returns the chunks: each
    /// is a trimmed, non-empty slice of at most `size` characters; its new
    /// part continues exactly where the previous chunk ended (only white
    /// space between them); its overlap is a proper tail of the previous
    /// chunk of at most `overlap` characters (with the white space after
    /// it); and the new parts cover the whole trimmed text.
    fn check(text: &str, size: usize, overlap: usize) -> Vec<&str> {
        let ps = pieces(text, size, overlap);
        let size = size.max(1);
        let overlap = overlap.min(size / 2);
        let trimmed_start = text.len() - text.trim_start().len();
        let trimmed_end = text.trim_end().len();
        if text.trim().is_empty() {
            assert!(ps.is_empty());
            return vec![];
        }
        let mut covered = trimmed_start;
        let mut prev: Option<Piece> = None;
        for p in &ps {
            let chunk = &text[p.range()];
            assert!(!chunk.is_empty(), "{ps:?}");
            assert_eq!(chunk, chunk.trim(), "chunks are trimmed");
            assert!(chunk.chars().count() <= size, "{} > {size}: {chunk:?}", chunk.chars().count());
            assert!(text[covered..p.fresh].trim().is_empty(), "nothing lost between {covered} and {}", p.fresh);
            if let Some(q) = prev {
                assert!(p.start > q.start && p.start <= p.fresh, "{q:?} then {p:?}");
                assert!(text[p.start..p.fresh].chars().count() <= overlap, "overlap {:?}", &text[p.start..p.fresh]);
                if p.start < p.fresh {
                    assert!(p.start < q.end, "the overlap comes from the previous chunk");
                }
            } else {
                assert_eq!(p.start, p.fresh);
            }
            assert!(p.end > p.fresh);
            covered = p.end;
            prev = Some(*p);
        }
        assert_eq!(covered, trimmed_end, "the last chunk ends where the text does");
        ps.iter().map(|p| &text[p.range()]).collect()
    }

    #[test]
    fn short_text_is_one_trimmed_chunk() {
        assert_eq!(check("  \n hello world \n\n", 100, 10), ["hello world"]);
        assert!(check(" \n\t ", 100, 10).is_empty());
        assert!(check("", 100, 10).is_empty());
    }

    #[test]
    fn paragraphs_are_packed_greedily() {
        let text = "aaa aaa\n\nbbb bbb\n\nccc ccc\n\nddd ddd";
        // Two paragraphs (16 chars) fit in 17, three do not.
        assert_eq!(check(text, 17, 0), ["aaa aaa\n\nbbb bbb", "ccc ccc\n\nddd ddd"]);
        // A paragraph break wins over a later sentence end or space.
        assert_eq!(
            check("One. Two\n\nThree four five. Six seven", 25, 0),
            ["One. Two", "Three four five.", "Six seven"]
        );
    }

    #[test]
    fn long_paragraphs_split_at_chinese_sentence_ends() {
        let text = "第一句话在这里。第二句话！第三句话？第四句；第五句话很长很长很长很长。";
        let chunks = check(text, 16, 0);
        assert_eq!(chunks, ["第一句话在这里。第二句话！", "第三句话？第四句；", "第五句话很长很长很长很长。"]);
        // Closing quotes stay with their sentence, and "……" is one end.
        let text = "他说：“我们走吧。”她想了想……然后说：“好！”";
        assert_eq!(check(text, 12, 0), ["他说：“我们走吧。”", "她想了想……", "然后说：“好！”"]);
    }

    #[test]
    fn long_paragraphs_split_at_latin_sentence_ends() {
        let text = "Pi is 3.14 here. Is it? Yes! Then; done (really.) Next one";
        let chunks = check(text, 20, 0);
        assert_eq!(chunks, ["Pi is 3.14 here.", "Is it? Yes! Then;", "done (really.)", "Next one"]);
        // A period inside a word or number does not end a sentence.
        assert_eq!(check("see e.g.the file x.rs now", 18, 0), ["see e.g.the file", "x.rs now"]);
    }

    #[test]
    fn then_line_breaks_then_spaces_then_hard() {
        assert_eq!(check("alpha beta\ngamma delta epsilon", 18, 0), ["alpha beta", "gamma delta", "epsilon"]);
        assert_eq!(check("abcdefghij", 4, 0), ["abcd", "efgh", "ij"]);
        // Hard cuts are on character boundaries: never inside a UTF-8 sequence.
        assert_eq!(check("火星是太阳系的行星", 4, 0), ["火星是太", "阳系的行", "星"]);
    }

    #[test]
    fn overlap_repeats_the_previous_tail_within_the_size() {
        let text = "One two three. Four five six. Seven eight nine. Ten eleven twelve.";
        // The whole last sentence when it fits in the overlap, else from a word start.
        assert_eq!(
            check(text, 40, 16),
            ["One two three. Four five six.", "Four five six. Seven eight nine.", "eight nine. Ten eleven twelve."]
        );
        assert_eq!(
            check(text, 30, 12),
            ["One two three. Four five six.", "five six. Seven eight nine.", "eight nine. Ten eleven twelve."]
        );
        // Without spaces, the overlap is exactly `overlap` characters.
        let chunks = check("一二三四五六七八九十甲乙丙丁", 6, 2);
        assert_eq!(chunks, ["一二三四五六", "五六七八九十", "九十甲乙丙丁"]);
    }

    #[test]
    fn overlap_larger_than_size_is_halved() {
        let chunks = check("一二三四五六七八九十甲乙丙丁", 8, 50);
        assert_eq!(chunks, ["一二三四五六七八", "五六七八九十甲乙", "九十甲乙丙丁"]);
        // A Latin word is not cut to make an overlap; the overlap starts after it.
        assert_eq!(check("abcdefghijklmnop", 8, 50), ["abcdefgh", "ijklmnop"]);
        assert_eq!(check("使用Langchain框架开发应用", 14, 7), ["使用Langchain框架开", "框架开发应用"]);
        // Size 0 and 1 still make progress.
        assert_eq!(check("abc", 0, 0), ["a", "b", "c"]);
        assert_eq!(check("abc", 1, 5), ["a", "b", "c"]);
    }

    #[test]
    fn chunks_never_cross_sections() {
        let d = doc(&[(&["A"], "one two three four"), (&["A", "B"], "five six"), (&[], "seven")]);
        let chunks = chunk(&d, &ChunkSettings { size: 10, overlap: 4 });
        let got: Vec<(&str, &str)> = chunks.iter().map(|c| (c.heading_path.as_str(), c.content.as_str())).collect();
        assert_eq!(got, [("A", "one two"), ("A", "two three"), ("A", "four"), ("A > B", "five six"), ("", "seven")]);
    }

    #[test]
    fn markdown_source_is_kept_as_written() {
        let text = "## 协议\n\n本项目代码遵循 [Apache-2.0](LICENSE) 协议。\n\n```shell\n$ pip install x\n```\n";
        let chunks = check(text, 1000, 100);
        assert_eq!(chunks, [text.trim()]);
    }

    #[test]
    fn bound_removes_controls_and_cuts_headings() {
        let long = "长".repeat(300);
        let d = ParsedDocument {
            title: Some(format!("  Re\u{0}port\t\u{7}\n 2024\u{202E}  {long}")),
            sections: vec![Section {
                headings: vec!["\u{0}\u{1}".into(), " 第一章\u{0} 概述 ".into(), long.clone(), "".into()],
                text: "a\r\nb\0c\rd".into(),
            }],
        };
        let d = bound(d);
        let title = d.title.unwrap();
        assert!(title.starts_with("Report 2024 长长"), "{title:?}");
        assert_eq!(title.chars().count(), MAX_HEADING_CHARS);
        assert!(title.ends_with('…'));
        let s = &d.sections[0];
        assert_eq!(s.headings.len(), 2, "empty headings are dropped");
        assert_eq!(s.headings[0], "第一章 概述");
        assert_eq!(s.headings[1].chars().count(), MAX_HEADING_CHARS);
        assert_eq!(s.text, "a\nbc\nd");
        for h in s.headings.iter().chain([&title]) {
            assert!(!h.chars().any(|c| c.is_control()), "{h:?}");
        }
        assert_eq!(bound(ParsedDocument { title: Some("\u{0} \t".into()), sections: vec![] }).title, None);
    }

    #[test]
    fn bound_limits_path_depth_and_length() {
        let headings: Vec<String> = (1..=12).map(|i| format!("h{i}")).collect();
        let d = bound(ParsedDocument { title: None, sections: vec![Section { headings, text: "x".into() }] });
        assert_eq!(d.sections[0].headings, ["h1", "h2", "h3", "h4", "h5", "h6", "h7", "h12"]);

        let headings = vec!["short".to_string(), "x".repeat(400), "y".repeat(400), "z".repeat(400)];
        let d = bound(ParsedDocument { title: None, sections: vec![Section { headings, text: "x".into() }] });
        let h = &d.sections[0].headings;
        let joined = h.join(SEPARATOR);
        assert!(joined.chars().count() <= MAX_PATH_CHARS, "{}", joined.chars().count());
        assert!(joined.chars().count() > MAX_PATH_CHARS - 10, "the budget is used");
        assert_eq!(h[0], "short", "short headings stay whole");
        assert!(h[1..].iter().all(|h| h.ends_with('…')));
    }

    #[test]
    fn many_tiny_sections_under_long_headings_get_shorter_paths() {
        let long = "标".repeat(200);
        let sections: Vec<Section> = (0..20_000)
            .map(|i| Section { headings: vec![long.clone(), long.clone(), format!("{i}")], text: "正文".into() })
            .collect();
        let text_chars = 2 * sections.len();
        let d = bound(ParsedDocument { title: None, sections });
        let total: usize = d.sections.iter().map(|s| path_chars(&s.headings)).sum();
        assert!(total <= 2 * text_chars + PATH_ALLOWANCE_CHARS, "{total}");
        assert!(total > 2 * text_chars, "the budget is used: {total}");
        assert!(d.sections.iter().all(|s| s.headings.len() == 3 && s.headings[0].starts_with('标')));

        // A document with ordinary sections keeps its paths whole.
        let sections: Vec<Section> = (0..5_000)
            .map(|i| Section {
                headings: vec!["第一部分 总体情况".into(), format!("第{i}节 详细的小标题")],
                text: "正文的一段话。".repeat(5),
            })
            .collect();
        let before = sections.clone();
        assert_eq!(bound(ParsedDocument { title: None, sections }).sections, before);
    }

    #[test]
    fn a_huge_heading_over_a_long_body_stores_a_bounded_total() {
        let heading = "题".repeat(200_000);
        let body = "这是正文的一句话，用来填充文档。\n\n".repeat(400_000 / 48);
        let source = format!("# {heading}\n\n{body}");
        let d = bound(super::super::text::parse_markdown(&source));
        assert_eq!(d.title.as_ref().map(|t| t.chars().count()), Some(MAX_HEADING_CHARS));
        let chunks = chunk(&d, &ChunkSettings::default());
        let stored: usize = chunks
            .iter()
            .map(|c| {
                c.heading_path.len() + c.content.len() + crate::search::index_text(&c.heading_path, &c.content).len()
            })
            .sum();
        assert!(stored < 4 * source.len(), "{stored} bytes stored for {} bytes", source.len());
        assert!(chunks.iter().all(|c| c.heading_path.chars().count() <= MAX_HEADING_CHARS));
    }

    #[test]
    fn controls_never_reach_the_heading_path() {
        let source = "# T\u{0}itle\u{1}\n\n## Sec\u{7f}tion\u{0}\u{1b}[31m\n\nbody\0 text\n";
        let d = bound(super::super::text::parse_markdown(source));
        assert_eq!(d.title.as_deref(), Some("Title"));
        for c in chunk(&d, &ChunkSettings::default()) {
            assert!(!c.heading_path.chars().any(char::is_control), "{c:?}");
            assert!(!c.content.contains('\0'));
        }
    }

    #[test]
    fn a_long_line_is_chunked_in_linear_time() {
        // 2 MB without a break: quadratic behaviour would take minutes here.
        let latin = "x".repeat(2 << 20);
        let started = std::time::Instant::now();
        // No overlap inside a Latin word: chunks of exactly 1000 characters.
        assert_eq!(pieces(&latin, 1000, 100).len(), latin.len().div_ceil(1000));
        let chinese = "火".repeat(1 << 20);
        // Each chunk after the first brings 900 new characters.
        assert_eq!(pieces(&chinese, 1000, 100).len(), ((1 << 20) - 100usize).div_ceil(900));
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "{:?}", started.elapsed());
    }

    fn text_strategy() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "a", "bc", "word", "火", "星是", "。", "！", "？", "；", ".", "!", "?", ";", "”", ")", "…", " ", "  ",
            "\n", "\n\n", "\t", "\n \n", "é", "😀", "\u{3000}",
        ]);
        prop::collection::vec(atoms, 0..300).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn random_text_chunks_within_size_and_loses_nothing(
            text in text_strategy(),
            size in 1usize..60,
            overlap in 0usize..80,
        ) {
            let chunks = check(&text, size, overlap);
            // Without their overlaps, the chunks are the text minus white space.
            let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            let ps = pieces(&text, size, overlap);
            let rebuilt: String = ps.iter().map(|p| squeeze(&text[p.fresh..p.end])).collect();
            prop_assert_eq!(rebuilt, squeeze(&text));
            prop_assert_eq!(chunks.len(), ps.len());
        }
    }
}
