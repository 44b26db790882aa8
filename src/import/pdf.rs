//! PDF documents: the text layer of every page, in reading order, one section per page.
//!
//! lopdf reads the file structure (cross-reference data, objects, object streams, and
//! decryption with the empty user password); everything about text is done here, because
//! pdf-extract (the crate on lopdf for this) panics on predefined CJK CMaps such as
//! `UniGB-UCS2-H`, on files without a cross-reference table and on many other malformed
//! inputs. The parts:
//! - [`repair`] rebuilds the cross-reference table of a file lopdf cannot load;
//! - [`lexer`] tokenizes content streams and CMaps tolerantly;
//! - [`cmap`] and [`font`] turn string bytes into Unicode text and glyph widths;
//! - [`content`] interprets a page's operators into positioned glyphs;
//! - [`layout`] puts the glyphs into reading order.
//!
//! Failures are reported as the kinds the import shows the user: an encrypted file that the
//! empty password does not open, a file without a text layer (a scan), or a damaged file
//! from which nothing could be recovered.

mod cmap;
mod content;
mod font;
mod layout;
mod lexer;
mod repair;
mod tables;

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};

use lopdf::{Dictionary, Document, Object, ObjectId, Stream};
use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

use super::parse::{ParseError, ParseErrorKind, ParsedDocument, Progress, Section};

/// Pages beyond this many are not read (the import bounds the text it keeps anyway).
const MAX_PAGES: usize = 20_000;

const ENCRYPTED: &str = "the PDF is encrypted (password-protected) and cannot be opened without its password; remove the password and upload it again";
const NO_TEXT: &str = "the PDF has no text layer (it may be a scanned image); text recognition (OCR) is not supported";
const CORRUPT: &str = "the PDF is damaged and no text could be recovered from it";

/// Parses a pdf file into sections, one per page that has text.
pub fn parse(bytes: &[u8], progress: Progress<'_>) -> Result<ParsedDocument, ParseError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::new(ParseErrorKind::Empty, "the PDF file is empty (it has no content at all)"));
    }
    let head = &bytes[..bytes.len().min(1024)];
    if !head.windows(5).any(|w| w == b"%PDF-") && repair::scan_objects(bytes).is_empty() {
        return Err(ParseError::new(ParseErrorKind::Corrupt, "the PDF is damaged: it is not a PDF file at all"));
    }
    progress(0.0);
    let result = read(bytes, progress);
    // A damaged file that is encrypted as well is reported as encrypted: that is what stands
    // between the user and the text, and a password-free copy may well load.
    match result {
        Err(e) if e.kind == ParseErrorKind::Corrupt && repair::last_reference(bytes, b"/Encrypt").is_some() => {
            Err(ParseError::new(ParseErrorKind::Encrypted, ENCRYPTED))
        }
        other => other,
    }
}

/// Loads the document (repairing it if need be) and extracts its text.
fn read(bytes: &[u8], progress: Progress<'_>) -> Result<ParsedDocument, ParseError> {
    match load(bytes) {
        Ok(doc) => {
            progress(0.05);
            match extract(&doc, progress) {
                Ok(parsed) => Ok(parsed),
                // A file that loads but yields nothing may have a wrong cross-reference table
                // that pointed lopdf at the wrong objects: try again from a scan of the objects.
                Err(first) => match load_repaired(bytes) {
                    Ok(repaired) => extract(&repaired, &mut |_| {}).map_err(|_| first),
                    Err(_) => Err(first),
                },
            }
        }
        Err(error) if error.kind == ParseErrorKind::Encrypted => Err(error),
        Err(error) => {
            let doc = load_repaired(bytes).map_err(|e| if e.kind == ParseErrorKind::Encrypted { e } else { error })?;
            progress(0.05);
            extract(&doc, progress)
        }
    }
}

/// Loads a document with lopdf as it is.
fn load(bytes: &[u8]) -> Result<Document, ParseError> {
    let doc = load_with_lopdf(bytes)?;
    if doc.is_encrypted() {
        return Err(ParseError::new(ParseErrorKind::Encrypted, ENCRYPTED));
    }
    if pages(&doc).is_empty() {
        return Err(ParseError::new(ParseErrorKind::Corrupt, "the PDF is damaged: it has no readable pages"));
    }
    Ok(doc)
}

/// Loads a document from a rebuilt cross-reference table.
fn load_repaired(bytes: &[u8]) -> Result<Document, ParseError> {
    let rebuilt = repair::rebuild(bytes).ok_or_else(|| {
        ParseError::new(ParseErrorKind::Corrupt, "the PDF is damaged: no objects could be found in it")
    })?;
    load(&rebuilt)
}

fn load_with_lopdf(bytes: &[u8]) -> Result<Document, ParseError> {
    // lopdf is a parser of untrusted input too: should it panic, the file counts as damaged
    // rather than failing the whole parse worker.
    match catch_unwind(AssertUnwindSafe(|| Document::load_mem(bytes))) {
        Ok(Ok(doc)) => Ok(doc),
        Ok(Err(error)) => {
            let message = error.to_string();
            if matches!(error, lopdf::Error::Decryption(_) | lopdf::Error::InvalidPassword)
                || message.contains("password")
                || message.contains("ecrypt")
            {
                return Err(ParseError::new(ParseErrorKind::Encrypted, ENCRYPTED));
            }
            Err(ParseError::new(ParseErrorKind::Corrupt, format!("the PDF is damaged ({message})")))
        }
        Err(_) => Err(ParseError::new(ParseErrorKind::Corrupt, "the PDF is damaged (its structure could not be read)")),
    }
}

/// Reads the text of every page.
fn extract(doc: &Document, progress: Progress<'_>) -> Result<ParsedDocument, ParseError> {
    let pages = pages(doc);
    if pages.is_empty() {
        return Err(ParseError::new(ParseErrorKind::Corrupt, "the PDF is damaged: it has no readable pages"));
    }
    let mut interpreter = content::Interpreter::new(doc);
    let mut sections = Vec::new();
    let mut damaged = false;
    let total = pages.len();
    for (i, page) in pages.into_iter().enumerate() {
        let content = interpreter.page(page);
        damaged |= content.damaged;
        if content.truncated {
            tracing::warn!(page = i + 1, "pdf page cut short: it has more content than the import reads");
        }
        let text = normalize(&layout::page_text(&content));
        if !text.is_empty() {
            sections.push(Section { headings: Vec::new(), text });
        }
        progress(0.05 + 0.95 * (i + 1) as f32 / total as f32);
    }
    if sections.is_empty() {
        let (kind, message) =
            if damaged { (ParseErrorKind::Corrupt, CORRUPT) } else { (ParseErrorKind::NoText, NO_TEXT) };
        return Err(ParseError::new(kind, message));
    }
    Ok(ParsedDocument { title: title(doc), sections })
}

/// The page dictionaries in order: the page tree from the catalog, or, when that yields
/// nothing (a broken tree), every page object in the file in object order.
fn pages(doc: &Document) -> Vec<&Dictionary> {
    let mut out = Vec::new();
    let root = doc.trailer.get(b"Root").ok().map(|r| resolve(doc, r));
    if let Some(Object::Dictionary(catalog)) = root
        && let Some(tree) = catalog.get(b"Pages").ok()
    {
        let mut seen: HashSet<ObjectId> = HashSet::new();
        let mut stack: Vec<&Object> = vec![tree];
        while let Some(node) = stack.pop() {
            if out.len() >= MAX_PAGES {
                break;
            }
            if let Object::Reference(id) = node
                && !seen.insert(*id)
            {
                continue;
            }
            let Object::Dictionary(dict) = resolve(doc, node) else { continue };
            match get(doc, dict, b"Kids") {
                Some(Object::Array(kids)) if get_name(doc, dict, b"Type") != Some(b"Page".as_slice()) => {
                    // Children go on the stack in reverse so that they come off in order.
                    stack.extend(kids.iter().rev());
                }
                _ => out.push(dict),
            }
        }
    }
    if out.is_empty() {
        out = doc
            .objects
            .values()
            .filter_map(|o| match o {
                Object::Dictionary(d) if get_name(doc, d, b"Type") == Some(b"Page".as_slice()) => Some(d),
                _ => None,
            })
            .take(MAX_PAGES)
            .collect();
    }
    out
}

/// The document's `/Title`, if it is a plausible title rather than a file name or a
/// placeholder.
fn title(doc: &Document) -> Option<String> {
    let info = match doc.trailer.get(b"Info").ok().map(|i| resolve(doc, i)) {
        Some(Object::Dictionary(d)) => d,
        _ => return None,
    };
    let raw = info.get(b"Title").ok().map(|t| resolve(doc, t))?;
    let text = lopdf::decode_text_string(raw).ok()?;
    let text = text.trim().trim_start_matches("Microsoft Word - ").trim();
    if text.is_empty() || text.chars().any(|c| c.is_control() || c == '\u{FFFD}') {
        return None;
    }
    let lower = text.to_lowercase();
    let placeholder = ["untitled", "无标题", "title", "document", "untitled document"].contains(&lower.as_str());
    let file_name = [".doc", ".docx", ".pdf", ".tex", ".dvi", ".rtf", ".odt", ".txt", ".ps", ".indd", ".xls", ".ppt"]
        .iter()
        .any(|ext| lower.ends_with(ext) || lower.ends_with(&format!("{ext}x")));
    if placeholder || file_name {
        return None;
    }
    Some(text.chars().take(200).collect())
}

/// Expands the Latin typographic ligatures (which TeX and many fonts draw as one glyph) so
/// that search finds "file" in "ﬁle", drops private-use characters (icon and emoji glyphs
/// that fonts map there carry no searchable meaning), and trims line ends.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split('\n') {
        let start = out.len();
        for c in line.chars() {
            match c {
                '\u{E000}'..='\u{F8FF}' | '\u{F0000}'..='\u{10FFFF}' => {}
                // Runs of spaces (layout padding, or left by dropped characters) become one.
                ' ' if out.len() == start || out.ends_with(' ') => {}
                '\u{FB00}' => out.push_str("ff"),
                '\u{FB01}' => out.push_str("fi"),
                '\u{FB02}' => out.push_str("fl"),
                '\u{FB03}' => out.push_str("ffi"),
                '\u{FB04}' => out.push_str("ffl"),
                '\u{FB05}' | '\u{FB06}' => out.push_str("st"),
                _ => out.push(c),
            }
        }
        let kept = out[start..].trim_end().len();
        out.truncate(start + kept);
        out.push('\n');
    }
    out.trim().to_string()
}

// Object access that tolerates broken files: references are followed (a bounded number of
// times), and a missing or wrongly typed entry is simply absent.

static NULL: Object = Object::Null;

fn resolve<'a>(doc: &'a Document, mut object: &'a Object) -> &'a Object {
    for _ in 0..32 {
        match object {
            Object::Reference(id) => object = doc.objects.get(id).unwrap_or(&NULL),
            other => return other,
        }
    }
    &NULL
}

fn get<'a>(doc: &'a Document, dict: &'a Dictionary, key: &[u8]) -> Option<&'a Object> {
    dict.get(key).ok().map(|o| resolve(doc, o)).filter(|o| !matches!(o, Object::Null))
}

fn get_name<'a>(doc: &'a Document, dict: &'a Dictionary, key: &[u8]) -> Option<&'a [u8]> {
    match get(doc, dict, key) {
        Some(Object::Name(name)) => Some(name),
        _ => None,
    }
}

fn number(doc: &Document, object: &Object) -> Option<f32> {
    match resolve(doc, object) {
        Object::Integer(i) => Some(*i as f32),
        Object::Real(r) if r.is_finite() => Some(*r),
        _ => None,
    }
}

fn get_number(doc: &Document, dict: &Dictionary, key: &[u8]) -> Option<f32> {
    number(doc, get(doc, dict, key)?)
}

/// The decoded data of a stream, at most `limit` bytes of it. Corrupt compressed data yields
/// what could be decoded before the damage; `None` only when a filter is not supported (image
/// codecs) or nothing at all could be decoded.
fn stream_data(doc: &Document, stream: &Stream, limit: usize) -> Option<Vec<u8>> {
    let filters: Vec<&[u8]> = match get(doc, &stream.dict, b"Filter") {
        None => Vec::new(),
        Some(Object::Name(name)) => vec![name.as_slice()],
        Some(Object::Array(items)) => items
            .iter()
            .filter_map(|i| match resolve(doc, i) {
                Object::Name(name) => Some(name.as_slice()),
                _ => None,
            })
            .collect(),
        Some(_) => return None,
    };
    let mut data = stream.content.clone();
    for filter in filters {
        data = match filter {
            b"FlateDecode" | b"Fl" => inflate(&data, limit)?,
            b"ASCIIHexDecode" | b"AHx" => ascii_hex(&data),
            b"RunLengthDecode" | b"RL" => run_length(&data, limit),
            b"ASCII85Decode" | b"A85" | b"LZWDecode" | b"LZW" => {
                // lopdf decodes these two; it is handed a stream with only this filter.
                let mut dict = Dictionary::new();
                dict.set("Filter", Object::Name(filter.to_vec()));
                if let Some(params) = get(doc, &stream.dict, b"DecodeParms") {
                    dict.set("DecodeParms", params.clone());
                }
                let single = Stream::new(dict, data);
                // A decoder panic on hostile data counts as undecodable data.
                let mut decoded = catch_unwind(AssertUnwindSafe(|| single.decompressed_content())).ok()?.ok()?;
                decoded.truncate(limit);
                decoded
            }
            _ => return None,
        };
    }
    data.truncate(limit);
    Some(data)
}

/// zlib (or raw deflate) data, decoded as far as it goes: a wrong checksum or a truncated or
/// damaged tail keeps everything decoded before it.
fn inflate(input: &[u8], limit: usize) -> Option<Vec<u8>> {
    let zlib = inflate_with(input, limit, inflate_flags::TINFL_FLAG_PARSE_ZLIB_HEADER);
    if zlib.as_ref().is_some_and(|d| !d.is_empty()) {
        return zlib;
    }
    // Some writers omit the zlib header or write a wrong one.
    let raw = inflate_with(input, limit, 0);
    let skipped = input.get(2..).and_then(|rest| inflate_with(rest, limit, 0));
    [raw, skipped].into_iter().flatten().max_by_key(Vec::len).or(zlib)
}

fn inflate_with(input: &[u8], limit: usize, flags: u32) -> Option<Vec<u8>> {
    let flags =
        flags | inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | inflate_flags::TINFL_FLAG_IGNORE_ADLER32;
    let mut decompressor = Box::<DecompressorOxide>::default();
    let mut out = vec![0u8; input.len().saturating_mul(4).clamp(1024, limit.max(1024))];
    let mut in_pos = 0;
    let mut out_pos = 0;
    loop {
        let (status, consumed, written) = decompress(&mut decompressor, &input[in_pos..], &mut out, out_pos, flags);
        in_pos += consumed;
        out_pos += written;
        match status {
            TINFLStatus::HasMoreOutput if out.len() < limit => {
                let grown = out.len().saturating_mul(2).min(limit);
                out.resize(grown, 0);
            }
            TINFLStatus::Done | TINFLStatus::HasMoreOutput => break,
            // Damage or a truncated stream: keep what was decoded.
            _ => {
                if out_pos == 0 {
                    return None;
                }
                break;
            }
        }
    }
    out.truncate(out_pos.min(limit));
    Some(out)
}

fn ascii_hex(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 2);
    let mut high: Option<u8> = None;
    for &b in input {
        if b == b'>' {
            break;
        }
        let Some(v) = (b as char).to_digit(16) else { continue };
        match high.take() {
            Some(h) => out.push(h << 4 | v as u8),
            None => high = Some(v as u8),
        }
    }
    if let Some(h) = high {
        out.push(h << 4);
    }
    out
}

fn run_length(input: &[u8], limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() && out.len() < limit {
        let n = input[i];
        i += 1;
        match n {
            128 => break,
            0..=127 => {
                let end = (i + n as usize + 1).min(input.len());
                out.extend_from_slice(&input[i..end]);
                i = end;
            }
            _ => {
                if let Some(&b) = input.get(i) {
                    out.extend(std::iter::repeat_n(b, 257 - n as usize));
                }
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lopdf::{EncryptionState, EncryptionVersion, Permissions};

    /// A PDF file with the given objects (numbered from 1; object 1 is the catalog) and a
    /// correct cross-reference table. `info` is the number of an /Info object, if any.
    fn build_pdf(objects: &[Vec<u8>], info: Option<usize>) -> Vec<u8> {
        let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
        let mut offsets = Vec::new();
        for (i, body) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(b"\nendobj\n");
        }
        let xref = out.len();
        out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f\r\n", objects.len() + 1).as_bytes());
        for offset in offsets {
            out.extend_from_slice(format!("{offset:010} 00000 n\r\n").as_bytes());
        }
        let info = info.map(|i| format!(" /Info {i} 0 R")).unwrap_or_default();
        out.extend_from_slice(
            format!("trailer\n<< /Size {} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1)
                .as_bytes(),
        );
        out
    }

    fn stream(dict: &str, content: &[u8]) -> Vec<u8> {
        let mut out = format!("<< {dict} /Length {} >>\nstream\n", content.len()).into_bytes();
        out.extend_from_slice(content);
        out.extend_from_slice(b"\nendstream");
        out
    }

    fn obj(text: &str) -> Vec<u8> {
        text.as_bytes().to_vec()
    }

    fn parse_all(bytes: &[u8]) -> Result<ParsedDocument, ParseError> {
        parse(bytes, &mut |_| {})
    }

    fn text_of(doc: &ParsedDocument) -> String {
        doc.sections.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("\n\n")
    }

    /// Two pages of Helvetica text; on the first the lower line is drawn before the upper one.
    fn helvetica_two_pages() -> Vec<u8> {
        let font = "/Font << /F1 5 0 R >>";
        build_pdf(
            &[
                obj("<< /Type /Catalog /Pages 2 0 R >>"),
                obj("<< /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >>"),
                obj(&format!(
                    "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << {font} >> /Contents 6 0 R >>"
                )),
                obj(&format!(
                    "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << {font} >> /Contents 7 0 R >>"
                )),
                obj("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"),
                stream(
                    "",
                    b"BT /F1 12 Tf 72 686 Td (second line of the paragraph) Tj ET\n\
                      BT /F1 12 Tf 72 700 Td (The upper line comes first,) Tj ET\n\
                      BT /F1 12 Tf 72 600 Td [(Caf) -20 (\\351 au lait) -1000 (\\2225 \\200)] TJ ET",
                ),
                stream("", b"BT /F1 12 Tf 14 TL 72 700 Td (Second page) Tj T* (next line) Tj ET"),
                obj("<< /Title (Quarterly report) /Producer (test) >>"),
            ],
            Some(8),
        )
    }

    #[test]
    fn cjk_cid_font_with_a_predefined_cmap_and_no_to_unicode() {
        let cid_font = |n: usize| {
            obj(&format!(
                "<< /Type /Font /Subtype /CIDFontType0 /BaseFont /STSong-Light \
                 /CIDSystemInfo << /Registry (Adobe) /Ordering (GB1) /Supplement 4 >> /FontDescriptor {n} 0 R /DW 1000 >>"
            ))
        };
        let pdf = build_pdf(
            &[
                obj("<< /Type /Catalog /Pages 2 0 R >>"),
                obj("<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
                obj("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] \
                     /Resources << /Font << /F1 4 0 R /F2 8 0 R >> >> /Contents 7 0 R >>"),
                obj(
                    "<< /Type /Font /Subtype /Type0 /BaseFont /STSong-Light /Encoding /UniGB-UCS2-H /DescendantFonts [5 0 R] >>",
                ),
                cid_font(6),
                obj("<< /Type /FontDescriptor /FontName /STSong-Light /Flags 6 /FontBBox [-25 -254 1000 880] \
                     /ItalicAngle 0 /Ascent 880 /Descent -120 /CapHeight 880 /StemV 93 >>"),
                // The second line is drawn first and lower; it must come out second. The last
                // line mixes one-byte ASCII codes and two-byte GBK codes in one string.
                stream(
                    "",
                    b"BT /F1 24 Tf 72 650 Td <4E2D56FD62A5544A002000320030003200365E74> Tj ET\n\
                      BT /F1 24 Tf 72 700 Td <706B661F> Tj <63A28BBF> Tj ET\n\
                      BT /F2 24 Tf 72 500 Td (AB\xd6\xd0\xce\xc4 C) Tj ET",
                ),
                obj(
                    "<< /Type /Font /Subtype /Type0 /BaseFont /STSong-Light /Encoding /GBK-EUC-H /DescendantFonts [9 0 R] >>",
                ),
                cid_font(6),
            ],
            None,
        );
        let doc = parse_all(&pdf).unwrap();
        assert_eq!(doc.sections.len(), 1);
        assert_eq!(doc.sections[0].text, "火星探访\n\n中国报告 2026年\n\nAB中文 C");
        assert!(doc.sections[0].headings.is_empty());
        assert_eq!(doc.title, None);
    }

    #[test]
    fn simple_font_text_in_reading_order_with_progress_per_page() {
        let mut seen = Vec::new();
        let doc = parse(&helvetica_two_pages(), &mut |p| seen.push(p)).unwrap();
        assert_eq!(doc.title.as_deref(), Some("Quarterly report"));
        assert_eq!(doc.sections.len(), 2);
        assert_eq!(
            doc.sections[0].text,
            "The upper line comes first,\nsecond line of the paragraph\n\nCafé au lait ’5 €"
        );
        assert_eq!(doc.sections[1].text, "Second page\nnext line");
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&1.0));
        let after_pages: Vec<_> = seen.iter().filter(|&&p| p > 0.05).collect();
        assert_eq!(after_pages.len(), 2, "one report per page: {seen:?}");
    }

    #[test]
    fn a_file_without_its_cross_reference_table_is_recovered() {
        let pdf = helvetica_two_pages();
        let cut = pdf.windows(4).rposition(|w| w == b"xref").unwrap();
        let doc = parse_all(&pdf[..cut]).unwrap();
        assert!(text_of(&doc).contains("The upper line comes first,"));
        // A wrong startxref offset is recovered the same way.
        let mut wrong = pdf.clone();
        let at = wrong.windows(9).rposition(|w| w == b"startxref").unwrap() + 10;
        wrong[at] = b'9';
        assert!(text_of(&parse_all(&wrong).unwrap()).contains("Second page"));
    }

    #[test]
    fn broken_files_fail_with_the_right_kind() {
        assert_eq!(parse_all(b"").unwrap_err().kind, ParseErrorKind::Empty);
        assert_eq!(parse_all(b" \n ").unwrap_err().kind, ParseErrorKind::Empty);
        let garbage: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let err = parse_all(&garbage).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::Corrupt);
        assert!(err.message.contains("damaged"), "{}", err.message);
        let mut fake = b"%PDF-1.7\n".to_vec();
        fake.extend_from_slice(&garbage);
        assert_eq!(parse_all(&fake).unwrap_err().kind, ParseErrorKind::Corrupt);
        // Truncated before any page object: nothing can be recovered.
        let pdf = helvetica_two_pages();
        let err = parse_all(&pdf[..60]).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::Corrupt, "{}", err.message);
    }

    #[test]
    fn a_page_with_only_an_image_has_no_text_layer() {
        let pdf = build_pdf(
            &[
                obj("<< /Type /Catalog /Pages 2 0 R >>"),
                obj("<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
                obj(
                    "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Resources << /XObject << /Im1 5 0 R >> >> /Contents 4 0 R >>",
                ),
                stream("", b"q 200 0 0 200 0 0 cm /Im1 Do Q BI /W 2 /H 1 /CS /G /BPC 8 ID \x00\xff EI"),
                stream(
                    "/Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace /DeviceGray /BitsPerComponent 8",
                    b"\x00\xff\xff\x00",
                ),
            ],
            None,
        );
        let err = parse_all(&pdf).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::NoText);
        assert!(err.message.contains("no text layer"), "{}", err.message);
    }

    #[test]
    fn encryption_with_an_empty_user_password_is_opened_and_a_real_password_is_reported() {
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/pypdf-libreoffice-writer-password.pdf");
        if let Ok(bytes) = std::fs::read(corpus) {
            let err = parse_all(&bytes).unwrap_err();
            assert_eq!(err.kind, ParseErrorKind::Encrypted);
            assert!(err.message.contains("encrypted (password-protected)"), "{}", err.message);
        }
        for (user, expect_text) in [("", true), ("secret", false)] {
            let mut doc = Document::load_mem(&helvetica_two_pages()).unwrap();
            doc.trailer.set(
                "ID",
                Object::Array(vec![
                    Object::String(vec![7u8; 16], lopdf::StringFormat::Hexadecimal),
                    Object::String(vec![9u8; 16], lopdf::StringFormat::Hexadecimal),
                ]),
            );
            let version = EncryptionVersion::V2 {
                document: &doc,
                owner_password: "owner",
                user_password: user,
                key_length: 128,
                permissions: Permissions::all(),
            };
            let state = EncryptionState::try_from(version).unwrap();
            doc.encrypt(&state).unwrap();
            let mut bytes = Vec::new();
            doc.save_to(&mut bytes).unwrap();
            assert!(bytes.windows(8).any(|w| w == b"/Encrypt"));
            match parse_all(&bytes) {
                Ok(parsed) if expect_text => assert!(text_of(&parsed).contains("The upper line comes first,")),
                Err(err) if !expect_text => assert_eq!(err.kind, ParseErrorKind::Encrypted, "{}", err.message),
                other => panic!("user password {user:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn recursive_form_xobjects_and_damaged_streams_are_bounded() {
        // Form 5 draws form 6, which draws form 5 again: each is entered once.
        let pdf = build_pdf(
            &[
                obj("<< /Type /Catalog /Pages 2 0 R >>"),
                obj("<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
                obj(
                    "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 500 500] /Resources << /XObject << /X1 5 0 R >> >> /Contents 4 0 R >>",
                ),
                stream("", b"1 0 0 1 25 25 cm /X1 Do"),
                stream(
                    "/Subtype /Form /BBox [0 0 1000 1000] /Resources << /Font << /F1 7 0 R >> /XObject << /X0 6 0 R >> >>",
                    b"BT /F1 24 Tf 0 300 Td (Hello world) Tj ET /X0 Do",
                ),
                stream(
                    "/Subtype /Form /BBox [0 0 1000 1000] /Resources << /Font << /F1 7 0 R >> /XObject << /X1 5 0 R >> >>",
                    b"BT /F1 24 Tf 0 100 Td (Hello again) Tj ET /X1 Do",
                ),
                obj("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"),
            ],
            None,
        );
        assert_eq!(text_of(&parse_all(&pdf).unwrap()), "Hello world\n\nHello again");
        // A zlib stream with a wrong checksum and a truncated one still give their text.
        let content = b"BT /F1 12 Tf 72 700 Td (Errors should never pass silently.) Tj ET".repeat(3);
        let mut compressed = miniz_oxide::deflate::compress_to_vec_zlib(&content, 6);
        let n = compressed.len();
        compressed[n - 1] ^= 0xff;
        assert_eq!(inflate(&compressed, 1 << 20).unwrap(), content);
        let truncated = inflate(&compressed[..n / 2], 1 << 20).unwrap();
        assert!(!truncated.is_empty() && content.starts_with(&truncated));
        assert_eq!(inflate(&compressed, 10).unwrap().len(), 10);
    }

    #[test]
    fn a_fan_out_of_forms_is_cut_short() {
        // Each form draws the next one ten times: 10^9 leaf draws if nothing stopped it.
        let mut objects = vec![
            obj("<< /Type /Catalog /Pages 2 0 R >>"),
            obj("<< /Type /Pages /Kids [3 0 R] /Count 1 >>"),
            obj(
                "<< /Type /Page /Parent 2 0 R /Resources << /XObject << /X 5 0 R >> /Font << /F1 4 0 R >> >> /Contents 14 0 R >>",
            ),
            obj("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"),
        ];
        for level in 0..9 {
            let next = 5 + level + 1;
            let body = if level == 8 { b"BT /F1 9 Tf (leaf) Tj ET".to_vec() } else { b"/X Do ".repeat(10) };
            let resources = format!("/Resources << /XObject << /X {next} 0 R >> /Font << /F1 4 0 R >> >>");
            objects.push(stream(&format!("/Type /XObject /Subtype /Form /BBox [0 0 10 10] {resources}"), &body));
        }
        objects.push(stream("", b"BT /F1 12 Tf 72 700 Td (Top of the page) Tj ET /X Do"));
        let pdf = build_pdf(&objects, None);
        let started = std::time::Instant::now();
        let doc = parse_all(&pdf).unwrap();
        assert!(doc.sections[0].text.starts_with("Top of the page"));
        assert!(started.elapsed().as_secs() < 120, "{:?}", started.elapsed());
    }

    #[test]
    fn damaged_variants_of_a_file_never_panic() {
        let pdf = helvetica_two_pages();
        let last_object = pdf.windows(6).rposition(|w| w == b"endobj").unwrap() + 6;
        for cut in (0..pdf.len()).step_by(7) {
            let result = parse_all(&pdf[..cut]);
            if cut >= last_object {
                assert!(text_of(&result.unwrap()).contains("Second page"), "cut at {cut}");
            }
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut bytes = pdf.clone();
            for _ in 0..1 + next() % 8 {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            // Any outcome but a panic is acceptable for a damaged file.
            let _ = parse_all(&bytes);
        }
    }

    /// Every PDF of the shared corpus: the phrases its manifest lists are found (whitespace
    /// runs compared as one space), and the files that must fail fail with the right kind.
    #[test]
    fn corpus_pdfs_match_the_manifest() {
        assert!(crate::import::corpus_check::check_format("pdf", parse, false) >= 14);
    }
}
