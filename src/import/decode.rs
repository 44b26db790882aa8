//! Bytes to text: BOMs, UTF-8, UTF-16 with or without a BOM, and the legacy
//! encodings Chinese text files come in (GBK/GB18030, Big5), detected with
//! chardetng. Also [`clean_text`], the one normalisation every parser's text
//! goes through (Unix line ends, no NULs).

use std::borrow::Cow;

use encoding_rs::Encoding;

/// Decoded text and the name of the encoding it was read as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub text: String,
    pub encoding: &'static str,
}

/// Why bytes are not text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not text (it looks binary)")]
    Binary,
    #[error("the file's text encoding could not be recognised")]
    Undecodable,
}

/// How many bytes from the start of a file the checks below look at. Enough
/// for a confident guess, and it keeps them O(1) in the file's size.
const SAMPLE: usize = 16 * 1024;

/// True when the bytes cannot be a text file: NUL bytes or many control
/// characters, unless they are UTF-16 (with a BOM, or without one but
/// recognisable as UTF-16 text by [`detect_utf16`]).
pub fn looks_binary(bytes: &[u8]) -> bool {
    if Encoding::for_bom(bytes).is_some_and(|(enc, _)| enc != encoding_rs::UTF_8) {
        return false;
    }
    if detect_utf16(bytes).is_some() {
        return false;
    }
    bytes_look_binary(&bytes[..bytes.len().min(SAMPLE)])
}

/// The byte-level test: any NUL, or more than 2% C0 control bytes other than
/// the ones text files do contain (tab, line ends, form feed, escape).
fn bytes_look_binary(head: &[u8]) -> bool {
    if head.contains(&0) {
        return true;
    }
    let controls = head.iter().filter(|&&b| b < 0x20 && !b"\t\n\r\x0c\x1b".contains(&b)).count();
    controls * 100 > head.len().max(1) * 2
}

/// Recognises UTF-16 text that has no BOM, from the first [`SAMPLE`] bytes.
///
/// Two kinds of evidence are used. Most UTF-16 text has NUL bytes on one side
/// of its code units only: every ASCII character, space and line end has a
/// zero high byte, while a binary file has NULs on both sides. When that
/// pattern is there (at least 1% of the units, four times as many as on the
/// other side), the sample must also decode to mostly (95%) plausible text
/// in that byte order. Otherwise (CJK text with few or no ASCII characters,
/// whose NULs come from code points such as U+4E00 and can sit on either
/// side) it is accepted only on stronger terms: it must not be valid UTF-8,
/// it must look binary as bytes (otherwise it is an 8-bit encoding, whose
/// ASCII pairs would also read as CJK in UTF-16), and it must decode to 98%
/// plausible text.
fn detect_utf16(bytes: &[u8]) -> Option<&'static Encoding> {
    let sample = &bytes[..bytes.len().min(SAMPLE) & !1];
    if sample.len() < 4 {
        return None;
    }
    let units = sample.len() / 2;
    let (mut zero_even, mut zero_odd) = (0usize, 0usize);
    for pair in sample.chunks_exact(2) {
        zero_even += usize::from(pair[0] == 0);
        zero_odd += usize::from(pair[1] == 0);
    }
    // In UTF-16LE the high byte comes second, so ASCII puts its NULs at odd offsets.
    let (nul_order, major, minor) = if zero_odd >= zero_even {
        (encoding_rs::UTF_16LE, zero_odd, zero_even)
    } else {
        (encoding_rs::UTF_16BE, zero_even, zero_odd)
    };
    if major >= 2
        && major * 100 >= units
        && major >= 4 * minor
        && plausible_share(sample, nul_order == encoding_rs::UTF_16BE) >= 0.95
    {
        return Some(nul_order);
    }
    // The sample may end inside a UTF-8 sequence; that does not make it invalid.
    let utf8 = std::str::from_utf8(sample).map_or_else(|e| e.error_len().is_none(), |_| true);
    if utf8 || !bytes_look_binary(sample) {
        return None;
    }
    [encoding_rs::UTF_16LE, encoding_rs::UTF_16BE]
        .into_iter()
        .find(|enc| plausible_share(sample, *enc == encoding_rs::UTF_16BE) >= 0.98)
}

/// The share of the code units in `sample` that read as ordinary text in the
/// given byte order: printable characters of the common scripts, tab and line
/// ends, and well-formed surrogate pairs.
fn plausible_share(sample: &[u8], big_endian: bool) -> f64 {
    let units: Vec<u16> = sample
        .chunks_exact(2)
        .map(|p| if big_endian { u16::from_be_bytes([p[0], p[1]]) } else { u16::from_le_bytes([p[0], p[1]]) })
        .collect();
    let mut good = 0usize;
    let mut i = 0;
    while i < units.len() {
        let u = units[i];
        if (0xD800..0xDC00).contains(&u) {
            match units.get(i + 1) {
                Some(low) if (0xDC00..0xE000).contains(low) => {
                    good += 2;
                    i += 2;
                    continue;
                }
                // The sample may end between the two halves of a pair.
                None => good += 1,
                Some(_) => {}
            }
        } else if plausible_unit(u) {
            good += 1;
        }
        i += 1;
    }
    good as f64 / units.len() as f64
}

/// A BMP code point that ordinary text is made of. The list is of blocks,
/// not of assigned characters, and errs on the side of the scripts users of
/// this product write in.
fn plausible_unit(u: u16) -> bool {
    matches!(u,
        0x09 | 0x0A | 0x0C | 0x0D
        | 0x20..=0x7E
        | 0xA0..=0x024F      // Latin-1 and Latin Extended
        | 0x0370..=0x052F    // Greek, Cyrillic
        | 0x0590..=0x06FF    // Hebrew, Arabic
        | 0x0900..=0x0DFF    // Indic scripts
        | 0x0E00..=0x0E7F    // Thai
        | 0x1100..=0x11FF    // Hangul Jamo
        | 0x1E00..=0x1FFF    // Latin Extended Additional, Greek Extended
        | 0x2000..=0x2BFF    // punctuation, symbols, arrows, box drawing
        | 0x2E80..=0x9FFF    // CJK radicals, punctuation, kana, CJK ideographs
        | 0xAC00..=0xD7A3    // Hangul syllables
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFE30..=0xFE4F    // CJK compatibility forms
        | 0xFEFF             // zero-width no-break space
        | 0xFF00..=0xFFEF    // half- and full-width forms
    )
}

/// Decodes the bytes of a text file: by its BOM if it has one, else as
/// BOM-less UTF-16 when it is recognisably that, else as UTF-8 when valid,
/// else in the legacy encoding chardetng detects. Binary content is refused.
pub fn decode_text(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if let Some((encoding, bom_len)) = Encoding::for_bom(bytes) {
        return decode_strict(encoding, &bytes[bom_len..]);
    }
    // Before the binary check: BOM-less UTF-16 has NULs, and its ASCII form
    // is even valid UTF-8.
    if let Some(encoding) = detect_utf16(bytes) {
        return decode_strict(encoding, bytes);
    }
    if looks_binary(bytes) {
        return Err(DecodeError::Binary);
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(Decoded { text: text.to_owned(), encoding: "UTF-8" });
    }
    let mut detector = chardetng::EncodingDetector::new();
    detector.feed(bytes, true);
    let encoding = detector.guess(None, true);
    // GBK files are decoded as GB18030, its superset, so nothing in a GBK file
    // is lost and four-byte GB18030 sequences also decode.
    let encoding = if encoding == encoding_rs::GBK { encoding_rs::GB18030 } else { encoding };
    let (text, _, had_errors) = encoding.decode(bytes);
    if had_errors {
        return Err(DecodeError::Undecodable);
    }
    Ok(Decoded { text: text.into_owned(), encoding: encoding.name() })
}

/// Decodes without a BOM and without replacement characters: a file that is
/// not entirely valid in the encoding it was recognised as is refused rather
/// than imported with holes.
fn decode_strict(encoding: &'static Encoding, bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let (text, had_errors) = encoding.decode_without_bom_handling(bytes);
    if had_errors {
        return Err(DecodeError::Undecodable);
    }
    Ok(Decoded { text: text.into_owned(), encoding: encoding.name() })
}

/// Unix line ends (`\r\n` and a lone `\r` become `\n`) and no NUL characters,
/// which PostgreSQL refuses in TEXT. One pass; the text is returned as it is
/// when there is nothing to change.
pub fn clean_text(text: &str) -> Cow<'_, str> {
    // Checked in blocks without an early exit inside them, which the compiler
    // vectorises: this runs over every imported text.
    let clean =
        text.as_bytes().chunks(256).all(|block| !block.iter().fold(false, |hit, &b| hit | (b == b'\r') | (b == 0)));
    if clean {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // `\r` and NUL are ASCII, so splitting at them never cuts a UTF-8 sequence.
    while let Some(at) = rest.find(['\r', '\0']) {
        out.push_str(&rest[..at]);
        if rest.as_bytes()[at] == b'\r' {
            out.push('\n');
            if rest.as_bytes().get(at + 1) == Some(&b'\n') {
                rest = &rest[at + 2..];
                continue;
            }
        }
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(text: &str, big_endian: bool) -> Vec<u8> {
        text.encode_utf16().flat_map(|u| if big_endian { u.to_be_bytes() } else { u.to_le_bytes() }).collect()
    }

    #[test]
    fn decodes_gbk_and_big5_and_utf16() {
        let (gbk, _, _) = encoding_rs::GBK
            .encode("早期计算机的字符编码基本上都是6位。这是一段足够长的中文文本，用来让检测器做出判断。");
        let d = decode_text(&gbk).unwrap();
        assert!(d.text.contains("早期计算机的字符编码"), "{d:?}");
        let (big5, _, _) = encoding_rs::BIG5.encode("維基大典者，網路為礎，文言維基始於丙戌年七夕，眾人共筆之書也。");
        assert!(decode_text(&big5).unwrap().text.contains("維基大典者"));
        let mut utf16 = vec![0xFF, 0xFE];
        for u in "# 火星".encode_utf16() {
            utf16.extend_from_slice(&u.to_le_bytes());
        }
        let d = decode_text(&utf16).unwrap();
        assert_eq!(d.text, "# 火星");
        assert_eq!(d.encoding, "UTF-16LE");
    }

    #[test]
    fn refuses_binary_and_empty() {
        assert_eq!(decode_text(b""), Err(DecodeError::Empty));
        assert_eq!(decode_text(b"PK\x03\x04\x00\x00binary"), Err(DecodeError::Binary));
        assert!(looks_binary(b"\x00\x01\x02"));
        assert!(!looks_binary("plain text\n".as_bytes()));
    }

    #[test]
    fn utf16_without_a_bom_is_recognised_in_both_byte_orders() {
        let samples = [
            "火星是太阳系的八大行星之一。\n它的质量、体积仅比水星大。\n",
            "Mars is the fourth planet from the Sun.\nIt is a dusty, cold desert world.\n",
            "# 火星 Mars\n\n维基百科，自由的百科全书。The Red Planet 是它的别名。\n",
        ];
        for text in samples {
            for (big_endian, name) in [(false, "UTF-16LE"), (true, "UTF-16BE")] {
                let bytes = utf16(&text.repeat(20), big_endian);
                assert!(!looks_binary(&bytes), "{name}: {text:?} passes the upload check");
                let d = decode_text(&bytes).unwrap_or_else(|e| panic!("{name}: {text:?}: {e}"));
                assert_eq!(d.encoding, name);
                assert_eq!(d.text, text.repeat(20));
            }
        }
    }

    #[test]
    fn utf16_of_cjk_without_ascii_is_recognised() {
        // No newline, no ASCII: no NUL at all in the sample, only the
        // control-like low bytes that would make it look binary.
        let text = "维基百科自由的百科全书火星是太阳系八大行星之一质量体积仅比水星大一些表面布满氧化铁".repeat(30);
        for (big_endian, name) in [(false, "UTF-16LE"), (true, "UTF-16BE")] {
            let bytes = utf16(&text, big_endian);
            let d = decode_text(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((d.encoding, d.text.as_str()), (name, text.as_str()));
        }
    }

    #[test]
    fn the_corpus_utf16_file_decodes_without_its_bom() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/lemire-chinese.utf16.txt");
        let Ok(bytes) = std::fs::read(path) else {
            panic!("the corpus must be at {path}");
        };
        assert_eq!(&bytes[..2], b"\xFF\xFE");
        let with_bom = decode_text(&bytes).unwrap();
        let without = decode_text(&bytes[2..]).unwrap();
        assert_eq!(without, with_bom);
        assert!(without.text.contains("的八大行星中第二小的行星，其質量、體積仅比"));
        // The same text swapped to big-endian.
        let be: Vec<u8> = bytes[2..].chunks_exact(2).flat_map(|p| [p[1], p[0]]).collect();
        assert_eq!(decode_text(&be).unwrap().text, with_bom.text);
    }

    #[test]
    fn binary_with_nuls_on_both_sides_is_not_taken_for_utf16() {
        // Little-endian integers and pointers, as in executables and images.
        let mut bin = Vec::new();
        for i in 0u32..4000 {
            bin.extend_from_slice(&(i * 7919).to_le_bytes());
        }
        assert!(looks_binary(&bin));
        assert_eq!(decode_text(&bin), Err(DecodeError::Binary));
        // Pseudo-random bytes (no NULs on one side only) stay binary too.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(looks_binary(&noise));
        assert_eq!(decode_text(&noise), Err(DecodeError::Binary));
    }

    #[test]
    fn ascii_and_legacy_chinese_are_not_taken_for_utf16() {
        // Pairs of ASCII letters read as CJK ideographs in UTF-16, so text
        // without NULs must not be recognised as UTF-16 on plausibility alone.
        let d = decode_text(b"hello world, these are plain ASCII words in a text file\n").unwrap();
        assert_eq!(d.encoding, "UTF-8");
        let (gbk, _, _) =
            encoding_rs::GBK.encode("Report 2024: 早期计算机的字符编码基本上都是6位。ASCII text mixed in.");
        let d = decode_text(&gbk).unwrap();
        assert_eq!(d.encoding, "gb18030");
        assert!(d.text.contains("早期计算机"));
        // A stray NUL in UTF-8 text is no UTF-16 pattern: still binary.
        let mut stray = "plain ASCII text in a file, long enough to matter\n".repeat(40).into_bytes();
        stray[101] = 0;
        stray[201] = 0;
        assert!(looks_binary(&stray));
    }

    #[test]
    fn clean_text_normalises_line_ends_and_drops_nul() {
        assert!(matches!(clean_text("a\nb"), Cow::Borrowed(_)));
        assert_eq!(clean_text("a\r\nb\rc\0d\r\r\n中\0"), "a\nb\ncd\n\n中");
        assert_eq!(clean_text("\r"), "\n");
    }
}
