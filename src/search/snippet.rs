//! Snippets: a short window of a chunk's original text around its matches,
//! safe to insert as HTML.
//!
//! The window is cut from the chunk's `content`, not from `search_text`
//! (which is space-joined tokens), so the user reads the document's own
//! words. Every occurrence of a query token inside the window is wrapped in
//! `<mark>…</mark>`; everything else is HTML-escaped, so the only markup in a
//! snippet is the marks. Matching ignores case. A token that starts or ends
//! with a Latin letter or digit matches only at a word boundary there (`art`
//! does not light up inside `start`); a Chinese token matches anywhere, since
//! Chinese has no word boundaries to check (大学 inside 北京大学 is exactly
//! the word that made the chunk match).

/// The window is about this many characters long.
pub const SNIPPET_CHARS: usize = 120;

/// How much text to show before the first match of the window.
const LEAD_CHARS: usize = 30;

/// Only this many bytes of the content are scanned for matches. A chunk is
/// about a thousand characters (3 KiB at most in UTF-8), so the bound only
/// guards the cost of a search with many hits and many terms.
const MAX_SCAN_BYTES: usize = 16 * 1024;

/// Matches beyond this many are ignored when choosing the window.
const MAX_MATCHES: usize = 512;

/// One occurrence of a query token: a range of characters of the content and
/// which token it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Match {
    start: usize,
    end: usize,
    term: usize,
}

/// The snippet of `content` for the query tokens `terms`: about
/// [`SNIPPET_CHARS`] characters around the part with the most distinct
/// tokens, with "…" where text was cut off. Without any match it is the start
/// of the content.
pub fn snippet(content: &str, terms: &[String]) -> String {
    let scanned = &content[..content.floor_char_boundary(MAX_SCAN_BYTES)];
    let chars: Vec<char> = scanned.chars().collect();
    let matches = find_matches(&chars, terms);
    let (start, end) = window(&chars, &matches);
    render(&chars, &matches, start, end, end < chars.len() || scanned.len() < content.len())
}

/// Every non-overlapping occurrence of a term in `chars`, in order; where two
/// overlap, the earlier and then the longer one wins (北京大学 over 大学).
fn find_matches(chars: &[char], terms: &[String]) -> Vec<Match> {
    // Lower-case one character at a time, remembering for each byte of the
    // lower-cased text which original character it came from: lower-casing
    // can change the length of a character ('İ' becomes two), so positions
    // in a lower-cased copy would not line up with the original otherwise.
    let mut lower = String::with_capacity(chars.len());
    let mut origin: Vec<usize> = Vec::with_capacity(chars.len());
    for (i, c) in chars.iter().enumerate() {
        for l in c.to_lowercase() {
            lower.push(l);
            origin.extend(std::iter::repeat_n(i, l.len_utf8()));
        }
    }
    let mut found = Vec::new();
    for (term_no, term) in terms.iter().enumerate() {
        let needle: String = term.chars().flat_map(char::to_lowercase).collect();
        let (Some(first), Some(last)) = (needle.chars().next(), needle.chars().next_back()) else { continue };
        let mut from = 0;
        while let Some(offset) = lower[from..].find(&needle) {
            let at = from + offset;
            let end = at + needle.len();
            let before = lower[..at].chars().next_back();
            let after = lower[end..].chars().next();
            let bounded = !(is_word_char(first) && before.is_some_and(is_word_char)
                || is_word_char(last) && after.is_some_and(is_word_char));
            if bounded {
                found.push(Match { start: origin[at], end: origin[end - 1] + 1, term: term_no });
                from = end;
            } else {
                // Not at a word boundary; an occurrence may still start
                // inside this one ("aa" in "baaa a").
                from = at + first.len_utf8();
            }
        }
    }
    found.sort_by_key(|m| (m.start, std::cmp::Reverse(m.end)));
    let mut kept: Vec<Match> = Vec::new();
    for m in found {
        if kept.last().is_none_or(|k| m.start >= k.end) {
            kept.push(m);
            if kept.len() == MAX_MATCHES {
                break;
            }
        }
    }
    kept
}

/// A letter or digit of a script that separates words with spaces: the
/// characters for which a word boundary means something.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() && !is_cjk(c)
}

/// Chinese, Japanese and Korean characters (the scripts written without
/// spaces between words, or segmented by jieba anyway).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF     // kana
        | 0x3400..=0x4DBF   // CJK extension A
        | 0x4E00..=0x9FFF   // CJK unified ideographs
        | 0xAC00..=0xD7AF   // Hangul syllables
        | 0xF900..=0xFAFF   // CJK compatibility ideographs
        | 0x20000..=0x3FFFF // CJK extensions B and later
    )
}

/// The character range to show: it starts a little before the match that
/// begins the densest stretch (the most distinct terms within
/// [`SNIPPET_CHARS`], then the most matches, then the earliest), and never
/// cuts a match in two.
fn window(chars: &[char], matches: &[Match]) -> (usize, usize) {
    let n = chars.len();
    let Some(best) = densest(matches) else { return (0, n.min(SNIPPET_CHARS)) };
    let anchor = matches[best].start;
    let mut start = anchor.saturating_sub(LEAD_CHARS);
    let mut end = (start + SNIPPET_CHARS).min(n);
    // Near the end of the content, show more before the match instead of
    // a short window.
    if end == n {
        start = n.saturating_sub(SNIPPET_CHARS).min(start);
    }
    // Never cut a match in two: widen the window to take it whole.
    for m in matches {
        if m.start < start && m.end > start {
            start = m.start;
        }
        if m.start < end && m.end > end {
            end = m.end;
        }
    }
    (start, end)
}

/// The index of the match that starts the stretch of [`SNIPPET_CHARS`]
/// characters with the most distinct terms (then the most matches).
fn densest(matches: &[Match]) -> Option<usize> {
    let mut best: Option<(usize, (usize, usize))> = None;
    let mut terms_seen: Vec<usize> = Vec::new();
    for (i, first) in matches.iter().enumerate() {
        terms_seen.clear();
        let mut count = 0;
        for m in matches[i..].iter().take_while(|m| m.end <= first.start + SNIPPET_CHARS) {
            count += 1;
            if !terms_seen.contains(&m.term) {
                terms_seen.push(m.term);
            }
        }
        let score = (terms_seen.len(), count);
        if best.is_none_or(|(_, b)| score > b) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// Writes `chars[start..end]` as HTML: escaped text, matches in `<mark>`,
/// runs of whitespace as one space, and "…" at either end that was cut.
fn render(chars: &[char], matches: &[Match], start: usize, end: usize, cut_after: bool) -> String {
    let mut out = String::with_capacity((end - start) * 4 + 32);
    if start > 0 {
        out.push('…');
    }
    let mut marks = matches.iter().filter(|m| m.start >= start && m.end <= end).peekable();
    // A whitespace run becomes one space, written only once text follows it,
    // so a snippet never starts or ends with a gap.
    let mut wrote_text = false;
    let mut pending_space = false;
    let mut i = start;
    while i < end {
        let mark = marks.next_if(|m| m.start == i);
        let c = chars[i];
        if mark.is_none() && c.is_whitespace() {
            pending_space = true;
            i += 1;
            continue;
        }
        if pending_space && wrote_text {
            out.push(' ');
        }
        pending_space = false;
        wrote_text = true;
        if let Some(m) = mark {
            out.push_str("<mark>");
            for &c in &chars[m.start..m.end] {
                push_escaped(&mut out, c);
            }
            out.push_str("</mark>");
            i = m.end;
        } else {
            push_escaped(&mut out, c);
            i += 1;
        }
    }
    if cut_after {
        out.push('…');
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        c if c.is_control() => out.push(' '),
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn marks_every_match_ignoring_case() {
        assert_eq!(
            snippet("Mars is red. MARS has two moons.", &terms(&["mars"])),
            "<mark>Mars</mark> is red. <mark>MARS</mark> has two moons."
        );
    }

    #[test]
    fn latin_terms_match_whole_words_only() {
        assert_eq!(snippet("start the art", &terms(&["art"])), "start the <mark>art</mark>");
    }

    #[test]
    fn chinese_terms_match_inside_longer_words_and_the_longest_wins() {
        assert_eq!(
            snippet("我在北京大学读书，大学生活", &terms(&["北京", "大学", "北京大学"])),
            "我在<mark>北京大学</mark>读书，<mark>大学</mark>生活"
        );
    }

    #[test]
    fn everything_but_the_marks_is_escaped() {
        let s = snippet(r#"<script>alert("x")</script> & 'mars' <b>"#, &terms(&["mars", "script"]));
        assert_eq!(
            s,
            "&lt;<mark>script</mark>&gt;alert(&quot;x&quot;)&lt;/<mark>script</mark>&gt; &amp; &#39;<mark>mars</mark>&#39; &lt;b&gt;"
        );
    }

    #[test]
    fn a_term_that_looks_like_markup_is_escaped_inside_its_mark() {
        assert_eq!(snippet("a <b> c", &terms(&["<b>"])), "a <mark>&lt;b&gt;</mark> c");
    }

    #[test]
    fn a_long_text_is_cut_around_the_match_with_ellipses() {
        let content = format!("{}火星探测器{}", "前文".repeat(200), "后文".repeat(200));
        let s = snippet(&content, &terms(&["火星"]));
        assert!(s.starts_with('…') && s.ends_with('…'), "{s}");
        assert!(s.contains("<mark>火星</mark>探测器"), "{s}");
        let visible = s.replace("<mark>", "").replace("</mark>", "");
        let n = visible.chars().count();
        assert!((SNIPPET_CHARS..=SNIPPET_CHARS + 2).contains(&n), "{n}: {s}");
    }

    #[test]
    fn the_window_goes_where_most_distinct_terms_are() {
        let content = format!("mars alone. {} mars and jupiter together. {}", "filler ".repeat(40), "tail ".repeat(40));
        let s = snippet(&content, &terms(&["mars", "jupiter"]));
        assert!(s.contains("<mark>mars</mark> and <mark>jupiter</mark>"), "{s}");
        assert!(!s.contains("alone"), "{s}");
    }

    #[test]
    fn without_a_match_the_start_is_shown() {
        let content = "word ".repeat(100);
        let s = snippet(&content, &terms(&["absent"]));
        assert!(!s.starts_with('…') && s.ends_with('…'), "{s}");
        assert!(!s.contains("<mark>"));
    }

    #[test]
    fn whitespace_is_collapsed_and_trimmed() {
        assert_eq!(snippet("\n\n  Mars\n\n\tis   red  \n", &terms(&["red"])), "Mars is <mark>red</mark>");
    }

    #[test]
    fn a_match_at_the_window_edge_is_not_cut() {
        let content = format!("{}abcdefgh{}", "x ".repeat(60), " y".repeat(100));
        let s = snippet(&content, &terms(&["abcdefgh"]));
        assert!(s.contains("<mark>abcdefgh</mark>"), "{s}");
    }

    #[test]
    fn lower_casing_that_changes_length_keeps_positions_right() {
        // 'İ' lower-cases to two characters; the match after it must still
        // cover exactly "Mars".
        assert_eq!(snippet("İİİ Mars", &terms(&["mars"])), "İİİ <mark>Mars</mark>");
    }

    #[test]
    fn a_boundary_miss_does_not_hide_the_next_occurrence() {
        assert_eq!(snippet("baa aa", &terms(&["aa"])), "baa <mark>aa</mark>");
        assert_eq!(snippet("xaaa aa", &terms(&["aa"])), "xaaa <mark>aa</mark>");
    }

    #[test]
    fn empty_content_gives_an_empty_snippet() {
        assert_eq!(snippet("", &terms(&["x"])), "");
    }
}
