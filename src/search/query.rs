//! Turning query tokens into each database's full-text query language.
//!
//! User text never reaches `MATCH` or `to_tsquery` raw: both languages have
//! operators (`AND`, `NOT`, `NEAR`, `*`, `:`, `(`, `!`, `&`, `|` …) that would
//! change the query or make it a syntax error. Every token is quoted as a
//! string literal of that language instead, so it can only ever be a term.
//!
//! The tokens are ORed, not ANDed. BM25 (and `ts_rank`) is a sum over the
//! query's terms, so a chunk that contains more of them, rarer ones, or more
//! often, already ranks higher; OR lets the ranking do that work. AND would
//! turn a natural-language question (as the AI assistants send) into no
//! result at all as soon as one of its words is missing from every chunk,
//! and jieba's search mode makes that likely: 北京大学 queries 北京, 大学
//! and 北京大学, and a chunk that says only 北京 should still be found.

use crate::ids::UserId;

/// An FTS5 `MATCH` expression for the chunks of `user` that contain any of
/// `tokens`: `search_owner : "<owner token>" AND search_text : ("t1" OR "t2" …)`,
/// every token an FTS5 string (`"…"` with `"` doubled). The words are
/// searched in `search_text` only, so that no word can match the owner
/// column. `None` when there are no tokens: such a query matches nothing, and
/// FTS5 would reject an empty expression.
pub fn fts5_match(user: &UserId, tokens: &[String]) -> Option<String> {
    if tokens.is_empty() {
        return None;
    }
    let terms: Vec<String> = tokens.iter().map(|t| format!("\"{}\"", t.replace('"', "\"\""))).collect();
    Some(format!("search_owner : \"{}\" AND search_text : ({})", owner_token(user), terms.join(" OR ")))
}

/// The one FTS5 token that stands for `user` in the `search_owner` column:
/// the bytes of the user id in lower-case hex, as the generated column
/// `lower(hex(user_id))` computes it (migration `0003_search.sql`). Hex is
/// used because it is one token to `unicode61` (which would split an id at
/// `-` and `_` and fold its case, so that two ids could share tokens) and
/// maps distinct ids to distinct tokens.
pub fn owner_token(user: &UserId) -> String {
    user.as_str().bytes().map(|b| format!("{b:02x}")).collect()
}

/// A `to_tsquery('simple', …)` input: every token as a quoted lexeme (`'…'`
/// with `'` doubled and `\` escaped), joined by `|`. Quoted text goes through
/// the same parser as `to_tsvector('simple', search_text)`, so a token that
/// the parser splits (`gpt-4`) becomes the same lexemes on both sides.
/// `None` when there are no tokens.
pub fn pg_tsquery(tokens: &[String]) -> Option<String> {
    if tokens.is_empty() {
        return None;
    }
    let terms: Vec<String> =
        tokens.iter().map(|t| format!("'{}'", t.replace('\\', "\\\\").replace('\'', "''"))).collect();
    Some(terms.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserId {
        UserId::parse("Alice_1-x").unwrap()
    }

    fn owned(tokens: &[&str]) -> Vec<String> {
        tokens.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn fts5_quotes_every_token_ors_them_and_restricts_them_to_the_owner() {
        assert_eq!(
            fts5_match(&alice(), &owned(&["火星", "mars"])).unwrap(),
            r#"search_owner : "416c6963655f312d78" AND search_text : ("火星" OR "mars")"#
        );
    }

    #[test]
    fn fts5_doubles_quotes() {
        assert!(fts5_match(&alice(), &owned(&[r#"say"hi"#])).unwrap().ends_with(r#"("say""hi")"#));
    }

    #[test]
    fn owner_tokens_are_hex_and_tell_ids_apart() {
        let a = owner_token(&UserId::parse("ab").unwrap());
        assert_eq!(a, "6162");
        // Ids that unicode61 would fold or split alike stay apart.
        for other in ["AB", "a-b", "a_b", "a"] {
            assert_ne!(owner_token(&UserId::parse(other).unwrap()), a, "{other}");
        }
    }

    #[test]
    fn no_tokens_no_query() {
        assert_eq!(fts5_match(&alice(), &[]), None);
        assert_eq!(pg_tsquery(&[]), None);
    }

    #[test]
    fn pg_quotes_every_token_and_ors_them() {
        assert_eq!(pg_tsquery(&owned(&["火星", "it's", r"a\b"])).unwrap(), r"'火星' | 'it''s' | 'a\\b'");
    }
}
