//! Bytes to text: BOMs, UTF-8, and the legacy encodings Chinese text files
//! come in (GBK/GB18030, Big5), detected with chardetng.

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

/// True when the bytes cannot be a text file: NUL bytes outside a UTF-16
/// file with a BOM, or many control characters.
pub fn looks_binary(bytes: &[u8]) -> bool {
    if Encoding::for_bom(bytes).is_some_and(|(enc, _)| enc != encoding_rs::UTF_8) {
        return false;
    }
    let head = &bytes[..bytes.len().min(8192)];
    if head.contains(&0) {
        return true;
    }
    let controls = head.iter().filter(|&&b| b < 0x20 && !b"\t\n\r\x0c\x1b".contains(&b)).count();
    controls * 100 > head.len().max(1) * 2
}

pub fn decode_text(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if let Some((encoding, bom_len)) = Encoding::for_bom(bytes) {
        let (text, had_errors) = encoding.decode_without_bom_handling(&bytes[bom_len..]);
        if had_errors {
            return Err(DecodeError::Undecodable);
        }
        return Ok(Decoded { text: text.into_owned(), encoding: encoding.name() });
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
