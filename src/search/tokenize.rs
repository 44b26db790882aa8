//! Word segmentation shared by indexing and querying.
//!
//! Chinese has no spaces between words, so neither SQLite's `unicode61`
//! tokenizer nor PostgreSQL's `simple` parser can find word boundaries in it
//! (and SQLite's `trigram` tokenizer cannot match two-character words, which
//! most Chinese words are). Instead, jieba segments the text in Rust, and the
//! database indexes the resulting words, space-joined. The same function
//! segments the query, so a word is indexed and looked up the same way.
//!
//! jieba's search mode (`cut_for_search`) also emits the dictionary words
//! inside a longer word: 北京大学 indexes 北京, 大学 and 北京大学, so a query
//! for any of them finds it.

use std::collections::HashSet;
use std::sync::OnceLock;

use jieba_rs::Jieba;

/// The segmenter with its compiled-in dictionary. Loading the dictionary
/// takes a noticeable fraction of a second, so it happens once per process
/// (see [`warm_up`]).
static JIEBA: OnceLock<Jieba> = OnceLock::new();

fn jieba() -> &'static Jieba {
    JIEBA.get_or_init(Jieba::new)
}

/// At most this many bytes of a heading path are segmented. Heading paths are
/// short in practice; the bound keeps a pathological one from costing more
/// than the chunk itself.
const MAX_HEADING_BYTES: usize = 2 * 1024;

/// At most this many bytes of a chunk's content are segmented. Chunks are
/// about a thousand characters; the bound only matters if the chunker ever
/// hands over something far larger.
const MAX_CONTENT_BYTES: usize = 64 * 1024;

/// At most this many tokens are stored per chunk (search mode emits about
/// 1.5 tokens per Chinese word, so a normal chunk stays far below it).
pub const MAX_INDEX_TOKENS: usize = 16 * 1024;

/// Tokens longer than this (hashes, base64, run-together garbage) are not
/// indexed: nobody searches for them, and PostgreSQL would not index words
/// over 2047 bytes anyway.
const MAX_TOKEN_CHARS: usize = 64;

/// At most this many bytes of a query are segmented. The HTTP endpoint
/// allows 200 characters; the AI assistants may pass a whole message.
const MAX_QUERY_BYTES: usize = 4 * 1024;

/// At most this many distinct tokens make up one query, so that one query
/// costs a bounded number of index lookups.
pub const MAX_QUERY_TOKENS: usize = 64;

/// Loads the dictionary now rather than during the first import or search.
pub fn warm_up() {
    jieba();
}

/// True once the dictionary is loaded, so that segmenting costs
/// microseconds rather than a fraction of a second.
pub fn is_warm() -> bool {
    JIEBA.get().is_some()
}

/// The search tokens of `text`, in order, with repeats: lower-cased words,
/// without whitespace and punctuation. `max_tokens` bounds the output.
pub fn tokens(text: &str, max_tokens: usize) -> Vec<String> {
    // Control characters never belong to a word, and removing them here
    // means no token can carry a NUL or an escape into SQL text or HTML.
    let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut out = Vec::new();
    for token in jieba().cut_for_search(&text, true) {
        if out.len() >= max_tokens {
            break;
        }
        let word = token.word;
        if !word.chars().any(char::is_alphanumeric) || word.chars().count() > MAX_TOKEN_CHARS {
            continue;
        }
        out.push(word.to_lowercase());
    }
    out
}

/// The text stored in a chunk's `search_text` column: the tokens of its
/// heading path and content, space-joined. The heading path is included so
/// that a query naming a chapter finds the chunks under it.
pub fn index_text(heading_path: &str, content: &str) -> String {
    let mut all = tokens(prefix(heading_path, MAX_HEADING_BYTES), MAX_INDEX_TOKENS);
    let room = MAX_INDEX_TOKENS - all.len();
    all.extend(tokens(prefix(content, MAX_CONTENT_BYTES), room));
    all.join(" ")
}

/// The distinct tokens of a query, in order of first appearance, without
/// stop words unless the query has nothing else (a search for "the" still
/// searches for "the").
pub fn query_tokens(query: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    let all: Vec<String> =
        tokens(prefix(query, MAX_QUERY_BYTES), usize::MAX).into_iter().filter(|t| seen.insert(t.clone())).collect();
    let content: Vec<String> = all.iter().filter(|t| !is_stop_word(t)).cloned().collect();
    let mut chosen = if content.is_empty() { all } else { content };
    chosen.truncate(MAX_QUERY_TOKENS);
    chosen
}

/// Function words that occur in nearly every chunk. They add almost nothing
/// to a BM25 score (their IDF is about zero), but since the query ORs its
/// words, each one would make nearly every chunk a candidate to score and
/// would be highlighted all over the snippets. They are dropped from queries
/// only; the index keeps them.
fn is_stop_word(token: &str) -> bool {
    // Chinese particles, pronouns, conjunctions and question words, then
    // English function words.
    const STOP_WORDS: &str = "的 了 着 过 是 在 和 与 及 或 也 都 就 而 之 于 把 被 让 给 对 从 向 吗 呢 吧 啊 呀 么 个 \
        这 那 这个 那个 这些 那些 我 你 他 她 它 我们 你们 他们 什么 怎么 怎样 如何 哪些 哪个 为什么 一个 有 有没有 \
        请 关于 以及 还是 或者 并且 但是 因为 所以 \
        a an the of to in on at by for with from as and or but is are was were be been it its this that these \
        those what which who how do does did about into than then";
    STOP_WORDS.split_ascii_whitespace().any(|w| w == token)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
fn prefix(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chinese_is_segmented_with_the_words_inside_longer_words() {
        let t = tokens("我在北京大学读书。", 100);
        for word in ["北京", "大学", "北京大学", "读书"] {
            assert!(t.contains(&word.to_string()), "{word} in {t:?}");
        }
        assert!(!t.iter().any(|w| w == "。"), "punctuation dropped: {t:?}");
    }

    #[test]
    fn latin_is_lower_cased_and_punctuation_and_spaces_dropped() {
        assert_eq!(tokens("Mars, the RED planet!", 100), ["mars", "the", "red", "planet"]);
    }

    #[test]
    fn control_characters_never_reach_a_token() {
        let t = tokens("a\0b\u{1b}[31mred\tgreen", 100);
        assert!(t.iter().all(|w| !w.chars().any(char::is_control)), "{t:?}");
        assert!(t.contains(&"green".to_string()), "{t:?}");
    }

    #[test]
    fn index_text_holds_heading_and_content_tokens_space_joined() {
        // Search mode adds the dictionary words inside 第一章 before it.
        let text = index_text("第一章 > 火星", "Mars is the fourth planet.");
        assert_eq!(text, "第一 一章 第一章 火星 mars is the fourth planet");
    }

    #[test]
    fn index_text_is_bounded() {
        let huge = "火星探测 Mars rover ".repeat(50_000);
        let text = index_text(&huge, &huge);
        assert!(text.split(' ').count() <= MAX_INDEX_TOKENS, "{}", text.split(' ').count());
        assert!(text.len() < 1024 * 1024);
    }

    #[test]
    fn overlong_tokens_are_not_indexed() {
        let long = "x".repeat(MAX_TOKEN_CHARS + 1);
        assert_eq!(tokens(&format!("short {long} word"), 100), ["short", "word"]);
    }

    #[test]
    fn prefix_never_splits_a_character() {
        assert_eq!(prefix("火星", 4), "火");
        assert_eq!(prefix("火星", 100), "火星");
        assert_eq!(prefix("ab", 0), "");
    }

    #[test]
    fn query_tokens_drop_stop_words_and_repeats() {
        assert_eq!(query_tokens("火星的大气"), ["火星", "大气"]);
        assert_eq!(query_tokens("the history of Mars and mars"), ["history", "mars"]);
    }

    #[test]
    fn a_query_of_stop_words_only_keeps_them() {
        assert_eq!(query_tokens("The"), ["the"]);
    }

    #[test]
    fn a_query_without_words_has_no_tokens() {
        assert!(query_tokens("  !!! ，。 ").is_empty());
        assert!(query_tokens("").is_empty());
    }

    #[test]
    fn query_tokens_are_bounded() {
        let many: String = (0..500).map(|i| format!("w{i} ")).collect();
        assert_eq!(query_tokens(&many).len(), MAX_QUERY_TOKENS);
    }
}
