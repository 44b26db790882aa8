//! The built-in offline provider, used when no `LLM_BASE_URL` is set.
//!
//! It lets a new user see the whole flow (sessions, streaming, resuming,
//! citations) without an account anywhere, and it never pretends to be a
//! model: every answer starts by saying what it is, and it only assembles
//! what is already there.
//!
//! - `generate`: an extractive draft: the sentences of the user's most
//!   relevant chunks that match the request, each cited, then the list of
//!   sources.
//! - `optimize`: a mechanical tidy-up (whitespace, punctuation beside
//!   Chinese text, repeated punctuation); the wording is left as it is.
//! - `search`: the results of the tools (the user's documents, and the web
//!   when `SEARCH_URL` is set), listed with their sources.

use crate::search::{SearchHit, query_tokens};
use crate::stores::chat::Source;

pub const GENERATE_NOTICE: &str =
    "（离线模式：未配置大模型。以下草稿直接摘录自您导入的文档，未经模型改写，请在此基础上组织成文。）";
pub const OPTIMIZE_NOTICE: &str =
    "（离线模式：未配置大模型，无法改写措辞。以下只做了格式整理：空白、标点和重复符号。）";
pub const SEARCH_NOTICE: &str = "（离线模式：未配置大模型。以下是检索结果的摘录，未经模型归纳。）";

/// Characters quoted from one chunk.
const EXCERPT_CHARS: usize = 240;

fn is_cjk(c: char) -> bool {
    matches!(c, '\u{3400}'..='\u{9fff}' | '\u{f900}'..='\u{faff}' | '\u{3000}'..='\u{303f}' | '\u{ff00}'..='\u{ffef}')
}

/// Sentences of `text`, each with its closing punctuation.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '。' | '！' | '？' | '!' | '?' | '；' | '\n') {
            let end = i + c.len_utf8();
            if !text[start..end].trim().is_empty() {
                out.push(text[start..end].trim());
            }
            start = end;
        }
    }
    if !text[start..].trim().is_empty() {
        out.push(text[start..].trim());
    }
    out
}

/// The sentences of `content` that mention the query's words (else its
/// first sentences), up to [`EXCERPT_CHARS`].
fn excerpt(content: &str, terms: &[String]) -> String {
    let all = sentences(content);
    let lower: Vec<String> = all.iter().map(|s| s.to_lowercase()).collect();
    let matching: Vec<&str> =
        all.iter().zip(&lower).filter(|(_, l)| terms.iter().any(|t| l.contains(t.as_str()))).map(|(s, _)| *s).collect();
    let chosen = if matching.is_empty() { all } else { matching };
    let mut out = String::new();
    for s in chosen {
        if !out.is_empty() && out.chars().count() + s.chars().count() > EXCERPT_CHARS {
            break;
        }
        out.push_str(s);
    }
    super::tools::clip(&out, EXCERPT_CHARS)
}

/// The pieces of a `generate` draft (streamed one by one).
pub fn draft(request: &str, hits: &[SearchHit], sources: &[Source]) -> Vec<String> {
    let mut pieces = vec![format!("{GENERATE_NOTICE}\n\n")];
    if hits.is_empty() {
        pieces.push(format!(
            "在您的文档中没有找到与“{}”相关的内容。请先导入相关文档，或换一种说法再试。",
            super::tools::clip(request, 60)
        ));
        return pieces;
    }
    let terms = query_tokens(request);
    for (i, hit) in hits.iter().enumerate() {
        pieces.push(format!("{} [{}]\n\n", excerpt(&hit.content, &terms), i + 1));
    }
    pieces.push(sources_list(sources));
    pieces
}

/// "参考来源" and one line per source.
pub fn sources_list(sources: &[Source]) -> String {
    let mut out = String::from("参考来源：\n");
    for (i, s) in sources.iter().enumerate() {
        out.push_str(&format!("[{}] {} {}\n", i + 1, s.title, s.url));
    }
    out
}

/// The pieces of a `search` digest.
pub fn digest(query: &str, sources: &[Source]) -> Vec<String> {
    let mut pieces = vec![format!("{SEARCH_NOTICE}\n\n")];
    if sources.is_empty() {
        pieces.push(format!("没有检索到与“{}”相关的结果。", super::tools::clip(query, 60)));
        return pieces;
    }
    for (i, s) in sources.iter().enumerate() {
        pieces.push(format!("{} [{}]\n\n", s.snippet, i + 1));
    }
    pieces.push(sources_list(sources));
    pieces
}

/// The pieces of an `optimize` answer: `text` tidied.
pub fn tidy_pieces(text: &str) -> Vec<String> {
    let tidied = tidy(text);
    let mut pieces = vec![format!("{OPTIMIZE_NOTICE}\n\n")];
    pieces.extend(tidied.split_inclusive('\n').map(str::to_owned));
    pieces
}

/// Whitespace and punctuation tidied; words untouched.
pub fn tidy(text: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let chars: Vec<char> = line.trim().chars().collect();
        let mut out = String::with_capacity(line.len());
        for (i, &c) in chars.iter().enumerate() {
            let prev = out.chars().last();
            let next = chars.get(i + 1).copied();
            let beside_cjk = prev.is_some_and(is_cjk) || next.is_some_and(is_cjk);
            if c.is_whitespace() {
                // No spaces between Chinese characters, one space elsewhere.
                if prev.is_none_or(|p| p.is_whitespace() || is_cjk(p)) || next.is_some_and(is_cjk) {
                    continue;
                }
                out.push(' ');
                continue;
            }
            let c = if beside_cjk {
                match c {
                    ',' => '，',
                    ';' => '；',
                    ':' => '：',
                    '?' => '？',
                    '!' => '！',
                    '(' => '（',
                    ')' => '）',
                    _ => c,
                }
            } else {
                c
            };
            // Repeated Chinese punctuation (。。 ，，) is one.
            if prev == Some(c) && matches!(c, '。' | '，' | '、' | '；' | '：') {
                continue;
            }
            out.push(c);
        }
        lines.push(out);
    }
    // At most one blank line between paragraphs.
    let mut joined = String::new();
    let mut blank = 0;
    for line in lines {
        if line.is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        joined.push_str(&line);
        joined.push('\n');
    }
    joined.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidying_fixes_spacing_and_punctuation_only() {
        assert_eq!(tidy("我们  今天 讨论,明天继续。。"), "我们今天讨论，明天继续。");
        assert_eq!(tidy("Mars   is a planet, far away."), "Mars is a planet, far away.");
        assert_eq!(tidy("第一段\n\n\n\n第二段 (草稿)"), "第一段\n\n第二段（草稿）");
    }

    #[test]
    fn an_excerpt_prefers_the_sentences_that_match() {
        let content = "第一句无关。火星是第四颗行星。第三句也无关。";
        assert_eq!(excerpt(content, &["火星".to_owned()]), "火星是第四颗行星。");
        assert_eq!(excerpt(content, &["木星".to_owned()]), "第一句无关。火星是第四颗行星。第三句也无关。");
    }

    #[test]
    fn answers_say_they_are_offline() {
        assert!(draft("火星", &[], &[]).concat().starts_with(GENERATE_NOTICE));
        assert!(digest("火星", &[]).concat().starts_with(SEARCH_NOTICE));
        assert!(tidy_pieces("x").concat().starts_with(OPTIMIZE_NOTICE));
    }
}
