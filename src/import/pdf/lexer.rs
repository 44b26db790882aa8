//! A tolerant tokenizer for PDF content streams and CMap files, which share PostScript's syntax:
//! operands (numbers, names, strings, arrays, dictionaries) followed by an operator.
//!
//! It is written by hand rather than taken from lopdf because lopdf's content parser stops at
//! the first token it does not understand (losing the rest of the page) and can panic on
//! inline images without a colour space; here anything unexpected is skipped and parsing
//! goes on.

/// One operand of an operator. Dictionaries are parsed (to skip them correctly) but their
/// content is never needed, so they are kept as an empty marker.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Operand {
    Number(f32),
    Name(Vec<u8>),
    String(Vec<u8>),
    Array(Vec<Operand>),
    Dict,
    Other,
}

impl Operand {
    pub(super) fn number(&self) -> Option<f32> {
        match self {
            Self::Number(n) if n.is_finite() => Some(*n),
            _ => None,
        }
    }
}

/// Nesting deeper than this (arrays in arrays, dictionaries in dictionaries) is not valid
/// content; it is cut off so that a hostile stream cannot exhaust the stack.
const MAX_NESTING: usize = 32;
/// Operands beyond this many before one operator are dropped (valid operators take at most a
/// handful; CMap sections take up to 100 entries of three operands each, and a little more).
const MAX_OPERANDS: usize = 4096;

pub(super) struct Lexer<'a> {
    data: &'a [u8],
    pos: usize,
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' | b'\0')
}

fn is_delimiter(b: u8) -> bool {
    matches!(b, b'(' | b')' | b'<' | b'>' | b'[' | b']' | b'{' | b'}' | b'/' | b'%')
}

fn is_regular(b: u8) -> bool {
    !is_whitespace(b) && !is_delimiter(b)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses a PDF number leniently: a sign, digits and at most one point; trailing junk (as in
/// `1.2.3` or `--4`, which some writers produce) is ignored rather than rejected.
fn parse_number(token: &[u8]) -> Option<f32> {
    let mut i = 0;
    let mut negative = false;
    while i < token.len() && matches!(token[i], b'+' | b'-') {
        negative ^= token[i] == b'-';
        i += 1;
    }
    let mut value = 0f64;
    let mut digits = 0;
    while i < token.len() && token[i].is_ascii_digit() {
        value = value * 10.0 + f64::from(token[i] - b'0');
        digits += 1;
        i += 1;
    }
    if i < token.len() && token[i] == b'.' {
        i += 1;
        let mut scale = 0.1;
        while i < token.len() && token[i].is_ascii_digit() {
            value += f64::from(token[i] - b'0') * scale;
            scale /= 10.0;
            digits += 1;
            i += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    let value = if negative { -value } else { value };
    Some(value as f32)
}

impl<'a> Lexer<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// How far into the data the lexer is, for progress and budgets.
    pub(super) fn position(&self) -> usize {
        self.pos
    }

    fn skip_whitespace_and_comments(&mut self) {
        while self.pos < self.data.len() {
            let b = self.data[self.pos];
            if is_whitespace(b) {
                self.pos += 1;
            } else if b == b'%' {
                while self.pos < self.data.len() && !matches!(self.data[self.pos], b'\r' | b'\n') {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    /// Reads operands up to the next operator and returns the operator, with the operands in
    /// `operands` (cleared first). `None` at the end of the data.
    pub(super) fn next_operation(&mut self, operands: &mut Vec<Operand>) -> Option<&'a [u8]> {
        operands.clear();
        loop {
            self.skip_whitespace_and_comments();
            if self.pos >= self.data.len() {
                return None;
            }
            match self.read_token(0) {
                Token::Operand(op) => {
                    if operands.len() < MAX_OPERANDS {
                        operands.push(op);
                    }
                }
                Token::Keyword(word) => return Some(word),
                Token::Skip => {}
            }
        }
    }

    /// Skips the binary data of an inline image, which follows `ID` and ends at an `EI` that
    /// stands alone between whitespace. Called after the `ID` operator was returned.
    pub(super) fn skip_inline_image_data(&mut self) {
        // One whitespace byte separates ID from the data.
        self.pos = (self.pos + 1).min(self.data.len());
        let data = &self.data[self.pos..];
        let mut i = 0;
        while i + 2 <= data.len() {
            if data[i] == b'E'
                && data[i + 1] == b'I'
                && (i == 0 || is_whitespace(data[i - 1]))
                && (i + 2 == data.len() || is_whitespace(data[i + 2]))
            {
                self.pos += i + 2;
                return;
            }
            i += 1;
        }
        self.pos = self.data.len();
    }

    fn read_token(&mut self, depth: usize) -> Token<'a> {
        let b = self.data[self.pos];
        match b {
            b'(' => {
                self.pos += 1;
                Token::Operand(Operand::String(self.read_literal_string()))
            }
            b'<' if self.data.get(self.pos + 1) == Some(&b'<') => {
                self.pos += 2;
                self.skip_dict(depth + 1);
                Token::Operand(Operand::Dict)
            }
            b'<' => {
                self.pos += 1;
                Token::Operand(Operand::String(self.read_hex_string()))
            }
            b'/' => {
                self.pos += 1;
                Token::Operand(Operand::Name(self.read_name()))
            }
            b'[' => {
                self.pos += 1;
                Token::Operand(self.read_array(depth + 1))
            }
            b')' | b'>' | b']' | b'{' | b'}' => {
                // Stray closing delimiters (and PostScript procedures, which content streams do
                // not have) are skipped.
                self.pos += 1;
                Token::Skip
            }
            _ => {
                let start = self.pos;
                while self.pos < self.data.len() && is_regular(self.data[self.pos]) {
                    self.pos += 1;
                }
                let word = &self.data[start..self.pos];
                if word.is_empty() {
                    self.pos += 1;
                    return Token::Skip;
                }
                let first = word[0];
                if first.is_ascii_digit() || matches!(first, b'+' | b'-' | b'.') {
                    return match parse_number(word) {
                        Some(n) => Token::Operand(Operand::Number(n)),
                        None => Token::Skip,
                    };
                }
                match word {
                    b"true" | b"false" | b"null" => Token::Operand(Operand::Other),
                    _ => Token::Keyword(word),
                }
            }
        }
    }

    fn read_name(&mut self) -> Vec<u8> {
        let mut name = Vec::new();
        while self.pos < self.data.len() && is_regular(self.data[self.pos]) {
            let b = self.data[self.pos];
            if b == b'#'
                && let (Some(h), Some(l)) = (
                    self.data.get(self.pos + 1).copied().and_then(hex_value),
                    self.data.get(self.pos + 2).copied().and_then(hex_value),
                )
            {
                name.push(h << 4 | l);
                self.pos += 3;
                continue;
            }
            name.push(b);
            self.pos += 1;
        }
        name
    }

    fn read_literal_string(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut nesting = 1usize;
        while self.pos < self.data.len() {
            let b = self.data[self.pos];
            self.pos += 1;
            match b {
                b'(' => {
                    nesting += 1;
                    out.push(b);
                }
                b')' => {
                    nesting -= 1;
                    if nesting == 0 {
                        break;
                    }
                    out.push(b);
                }
                b'\\' => {
                    let Some(&e) = self.data.get(self.pos) else { break };
                    self.pos += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'0'..=b'7' => {
                            let mut value = u32::from(e - b'0');
                            for _ in 0..2 {
                                match self.data.get(self.pos) {
                                    Some(&d @ b'0'..=b'7') => {
                                        value = value * 8 + u32::from(d - b'0');
                                        self.pos += 1;
                                    }
                                    _ => break,
                                }
                            }
                            out.push(value as u8);
                        }
                        // A backslash at the end of a line continues the string on the next.
                        b'\r' => {
                            if self.data.get(self.pos) == Some(&b'\n') {
                                self.pos += 1;
                            }
                        }
                        b'\n' => {}
                        other => out.push(other),
                    }
                }
                other => out.push(other),
            }
        }
        out
    }

    fn read_hex_string(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut high: Option<u8> = None;
        while self.pos < self.data.len() {
            let b = self.data[self.pos];
            self.pos += 1;
            if b == b'>' {
                break;
            }
            let Some(v) = hex_value(b) else { continue };
            match high.take() {
                Some(h) => out.push(h << 4 | v),
                None => high = Some(v),
            }
        }
        // An odd final digit is followed by an implied 0.
        if let Some(h) = high {
            out.push(h << 4);
        }
        out
    }

    fn read_array(&mut self, depth: usize) -> Operand {
        let mut items = Vec::new();
        loop {
            self.skip_whitespace_and_comments();
            let Some(&b) = self.data.get(self.pos) else { break };
            if b == b']' {
                self.pos += 1;
                break;
            }
            if depth >= MAX_NESTING && b == b'[' {
                self.pos += 1;
                continue;
            }
            match self.read_token(depth) {
                Token::Operand(op) => items.push(op),
                // An operator inside an array means the array was never closed: end it here
                // and let the operator be read again by the caller.
                Token::Keyword(word) => {
                    self.pos -= word.len();
                    break;
                }
                Token::Skip => {}
            }
        }
        Operand::Array(items)
    }

    fn skip_dict(&mut self, depth: usize) {
        loop {
            self.skip_whitespace_and_comments();
            let Some(&b) = self.data.get(self.pos) else { return };
            if b == b'>' && self.data.get(self.pos + 1) == Some(&b'>') {
                self.pos += 2;
                return;
            }
            if depth >= MAX_NESTING && b == b'<' {
                self.pos += 1;
                continue;
            }
            if let Token::Keyword(word) = self.read_token(depth) {
                // Only `R` (an indirect reference) belongs here; any other keyword is an
                // operator, which means the dictionary was left open.
                if word != b"R" {
                    self.pos -= word.len();
                    return;
                }
            }
        }
    }
}

enum Token<'a> {
    Operand(Operand),
    Keyword(&'a [u8]),
    Skip,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(data: &[u8]) -> Vec<(String, Vec<Operand>)> {
        let mut lexer = Lexer::new(data);
        let mut operands = Vec::new();
        let mut out = Vec::new();
        while let Some(op) = lexer.next_operation(&mut operands) {
            out.push((String::from_utf8_lossy(op).into_owned(), operands.clone()));
            if op == b"ID" {
                lexer.skip_inline_image_data();
            }
        }
        out
    }

    #[test]
    fn reads_strings_numbers_and_arrays() {
        let got = ops(b"BT /F1 12 Tf 1 0 0 1 -.5 +3. Tm (a\\(b\\)\\101\\\ncd) Tj [<4142 4> -250 (x)] TJ ET");
        assert_eq!(got[1].0, "Tf");
        assert_eq!(got[1].1, vec![Operand::Name(b"F1".to_vec()), Operand::Number(12.0)]);
        assert_eq!(got[2].1[4], Operand::Number(-0.5));
        assert_eq!(got[3].1, vec![Operand::String(b"a(b)Acd".to_vec())]);
        assert_eq!(
            got[4].1,
            vec![Operand::Array(vec![
                Operand::String(vec![0x41, 0x42, 0x40]),
                Operand::Number(-250.0),
                Operand::String(b"x".to_vec())
            ])]
        );
        assert_eq!(got.last().unwrap().0, "ET");
    }

    #[test]
    fn survives_junk_inline_images_and_unclosed_things() {
        let got = ops(b"q ] } BI /W 2 /H 2 ID \x00EI\xff EI Q /N <</A [1 2 <<>> ] >> BDC (unclosed");
        let names: Vec<_> = got.iter().map(|(o, _)| o.as_str()).collect();
        assert_eq!(names, ["q", "BI", "ID", "Q", "BDC"]);
        let got = ops(b"[(a) Tj (b) Tj");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1, vec![Operand::String(b"b".to_vec())]);
    }

    #[test]
    fn deep_nesting_is_cut_off() {
        let mut data = vec![b'['; 100_000];
        data.extend_from_slice(b" (x) Tj");
        let got = ops(&data);
        assert_eq!(got.last().unwrap().0, "Tj");
    }
}
