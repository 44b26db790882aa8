//! Fonts as far as text extraction needs them: how a string's bytes split into codes, what
//! Unicode text each code stands for, and how far each glyph advances (for positions, and so
//! for word gaps and reading order).
//!
//! Where the text of a code comes from, in order of trust:
//! - the font's `/ToUnicode` CMap;
//! - for simple fonts, the glyph name the encoding gives the code (`/Differences`, a base
//!   encoding, or the encoding built into an embedded Type 1 program), looked up in the Adobe
//!   Glyph List;
//! - for composite fonts, a predefined CJK CMap whose codes are a known character set (see
//!   [`super::cmap::Predefined`]), or else the embedded TrueType program's own `cmap`/`post`
//!   tables (CID to glyph to Unicode), which is how fonts without any map are still read.
//!
//! A code none of these explains yields no text (its advance still counts).

use std::collections::HashMap;

use lopdf::{Dictionary, Document, Object};

use super::cmap::{EncodingCMap, Predefined, ToUnicode, code_value, glyph_name_text};
use super::lexer::{Lexer, Operand};
use super::tables::{MAC_ROMAN, PDF_DOC, STANDARD, STANDARD_WIDTHS, WIN_ANSI};
use super::{get, get_name, get_number, stream_data};

/// Embedded font programs larger than this are not inspected for encodings.
const FONT_PROGRAM_LIMIT: usize = 32 << 20;
/// At most this many codepoints of an embedded TrueType `cmap` are inverted.
const CMAP_CODEPOINT_LIMIT: usize = 200_000;

/// One code of a shown string.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Code {
    /// Its Unicode text (empty when unknown).
    pub(super) text: String,
    /// Horizontal advance in text space units (glyph space / 1000 for ordinary fonts).
    pub(super) width: f32,
    /// A single-byte code 32, to which word spacing (`Tw`) applies.
    pub(super) is_space: bool,
}

/// How a composite font's codes are split and what they are.
#[derive(Debug)]
enum CodeSource {
    Predefined(Predefined),
    Embedded(EncodingCMap),
}

#[derive(Debug)]
enum Kind {
    Simple {
        texts: Vec<Option<String>>,
        widths: Vec<f32>,
    },
    Composite {
        source: CodeSource,
        widths: CidWidths,
        /// CID to text from the embedded TrueType program, for Identity fonts without a map.
        cid_texts: HashMap<u32, String>,
    },
}

#[derive(Debug)]
pub(super) struct Font {
    kind: Kind,
    to_unicode: Option<ToUnicode>,
    /// Vertical writing: glyphs advance downwards.
    pub(super) vertical: bool,
}

/// CID widths of a composite font (`/W`, `/DW`), in text space units.
#[derive(Debug, Default)]
struct CidWidths {
    default: f32,
    singles: HashMap<u32, f32>,
    ranges: Vec<(u32, u32, f32)>,
}

impl CidWidths {
    fn get(&self, cid: u32) -> f32 {
        if let Some(w) = self.singles.get(&cid) {
            return *w;
        }
        self.ranges.iter().find(|(lo, hi, _)| *lo <= cid && cid <= *hi).map_or(self.default, |r| r.2)
    }
}

fn base_font_name(doc: &Document, font: &Dictionary) -> String {
    let name = get_name(doc, font, b"BaseFont").unwrap_or_default();
    let name = String::from_utf8_lossy(name).into_owned();
    // A subset font's name starts with a six-letter tag and a plus sign.
    match name.split_once('+') {
        Some((tag, rest)) if tag.len() == 6 && tag.bytes().all(|b| b.is_ascii_uppercase()) => rest.to_string(),
        _ => name,
    }
}

fn base_encoding(name: &[u8]) -> Option<&'static [u16; 256]> {
    match name {
        b"WinAnsiEncoding" => Some(&WIN_ANSI),
        b"MacRomanEncoding" => Some(&MAC_ROMAN),
        b"StandardEncoding" => Some(&STANDARD),
        b"PDFDocEncoding" => Some(&PDF_DOC),
        _ => None,
    }
}

/// The standard-14 family whose metrics stand in for a font without `/Widths`.
fn standard_widths(base: &str) -> Option<&'static [u16; 95]> {
    let lower = base.to_ascii_lowercase();
    let bold = lower.contains("bold") || lower.contains("black") || lower.contains("heavy");
    let italic = lower.contains("italic") || lower.contains("oblique");
    let family = if lower.starts_with("times") || lower.contains("roman") || lower.contains("serif") {
        match (bold, italic) {
            (false, false) => "Times-Roman",
            (true, false) => "Times-Bold",
            (false, true) => "Times-Italic",
            (true, true) => "Times-BoldItalic",
        }
    } else if lower.starts_with("courier") || lower.contains("mono") {
        return None;
    } else if bold {
        "Helvetica-Bold"
    } else {
        "Helvetica"
    };
    STANDARD_WIDTHS.iter().find(|(name, _)| *name == family).map(|(_, w)| w)
}

fn is_monospace(base: &str) -> bool {
    let lower = base.to_ascii_lowercase();
    lower.starts_with("courier") || lower.contains("mono")
}

/// The encoding built into an embedded Type 1 font program: the `/Encoding` array of its
/// clear-text part (`dup 65 /A put ...`). `None` when it uses `StandardEncoding` or has none.
fn type1_builtin_encoding(program: &[u8]) -> Option<HashMap<u8, Vec<u8>>> {
    let clear_end = program.windows(5).position(|w| w == b"eexec").unwrap_or(program.len());
    let clear = &program[..clear_end];
    let start = clear.windows(9).position(|w| w == b"/Encoding")?;
    let mut lexer = Lexer::new(&clear[start + 9..]);
    let mut operands = Vec::new();
    let mut map = HashMap::new();
    while let Some(op) = lexer.next_operation(&mut operands) {
        match op {
            b"StandardEncoding" => return None,
            b"put" => {
                if let [.., Operand::Number(code), Operand::Name(name)] = operands.as_slice()
                    && (0.0..=255.0).contains(code)
                    && name != b".notdef"
                {
                    map.insert(*code as u8, name.clone());
                }
            }
            b"def" | b"readonly" if !map.is_empty() => break,
            _ => {}
        }
        if lexer.position() > 256 * 1024 {
            break;
        }
    }
    (!map.is_empty()).then_some(map)
}

/// The encoding built into an embedded CFF program (`/FontFile3`, bare or in an OpenType
/// wrapper): code to glyph through the CFF encoding and charset, glyph to name.
fn cff_builtin_encoding(program: &[u8]) -> Option<HashMap<u8, Vec<u8>>> {
    let cff_data = match ttf_parser::RawFace::parse(program, 0) {
        Ok(face) => face.table(ttf_parser::Tag::from_bytes(b"CFF "))?,
        Err(_) => program,
    };
    let table = ttf_parser::cff::Table::parse(cff_data)?;
    let mut map = HashMap::new();
    for code in 0..=255u8 {
        if let Some(name) = table.glyph_index(code).and_then(|gid| table.glyph_name(gid))
            && name != ".notdef"
        {
            map.insert(code, name.as_bytes().to_vec());
        }
    }
    (!map.is_empty()).then_some(map)
}

/// Glyph id to text from an embedded TrueType/OpenType program: its Unicode `cmap` inverted,
/// or else its `post` glyph names (or, for a bare CFF program, its glyph names).
fn truetype_glyph_texts(program: &[u8]) -> HashMap<u16, String> {
    let mut texts = HashMap::new();
    let Ok(face) = ttf_parser::RawFace::parse(program, 0) else {
        // A bare CFF program (`/FontFile3`): name-keyed ones name their glyphs.
        if let Some(cff) = ttf_parser::cff::Table::parse(program) {
            for gid in 0..cff.number_of_glyphs() {
                if let Some(text) = cff.glyph_name(ttf_parser::GlyphId(gid)).and_then(|n| glyph_name_text(n.as_bytes()))
                {
                    texts.insert(gid, text);
                }
            }
        }
        return texts;
    };
    if let Some(cmap) = face.table(ttf_parser::Tag::from_bytes(b"cmap")).and_then(ttf_parser::cmap::Table::parse) {
        for subtable in cmap.subtables {
            let symbol = subtable.platform_id == ttf_parser::PlatformId::Windows && subtable.encoding_id == 0;
            if !subtable.is_unicode() && !symbol {
                continue;
            }
            let mut seen = 0usize;
            subtable.codepoints(|cp| {
                seen += 1;
                if seen > CMAP_CODEPOINT_LIMIT {
                    return;
                }
                // Symbol subtables put their codes at U+F000 + code: those are no text.
                if symbol && (0xF000..=0xF0FF).contains(&cp) {
                    return;
                }
                if let (Some(gid), Some(ch)) = (subtable.glyph_index(cp), char::from_u32(cp)) {
                    texts.entry(gid.0).or_insert_with(|| ch.to_string());
                }
            });
        }
    }
    if texts.is_empty()
        && let Some(post) = face.table(ttf_parser::Tag::from_bytes(b"post")).and_then(ttf_parser::post::Table::parse)
    {
        for (gid, name) in post.names().enumerate().take(65536) {
            if let Some(text) = glyph_name_text(name.as_bytes()) {
                texts.insert(gid as u16, text);
            }
        }
    }
    texts
}

/// Drops control characters a map may produce; keeps everything printable.
fn clean(text: String) -> String {
    if text.chars().all(|c| !c.is_control() || c == '\t') {
        return text;
    }
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

impl Font {
    /// Reads a font dictionary. Never fails: what cannot be read falls back to defaults.
    pub(super) fn load(doc: &Document, font: &Dictionary) -> Self {
        let subtype = get_name(doc, font, b"Subtype").unwrap_or_default();
        let to_unicode = match get(doc, font, b"ToUnicode") {
            Some(Object::Stream(s)) => stream_data(doc, s, FONT_PROGRAM_LIMIT).map(|d| ToUnicode::parse(&d)),
            _ => None,
        }
        .filter(|m| !m.is_empty());
        if subtype == b"Type0" {
            Self::load_composite(doc, font, to_unicode)
        } else {
            Self::load_simple(doc, font, subtype, to_unicode)
        }
    }

    fn load_simple(doc: &Document, font: &Dictionary, subtype: &[u8], to_unicode: Option<ToUnicode>) -> Self {
        let base = base_font_name(doc, font);
        let descriptor = match get(doc, font, b"FontDescriptor") {
            Some(Object::Dictionary(d)) => Some(d),
            _ => None,
        };

        // The base table: the named encoding, else the font's own, else StandardEncoding
        // (WinAnsi for TrueType, whose built-in encoding is usually that).
        let encoding = get(doc, font, b"Encoding");
        let (named_base, differences) = match encoding {
            Some(Object::Name(name)) => (base_encoding(name), None),
            Some(Object::Dictionary(dict)) => (
                get_name(doc, dict, b"BaseEncoding").and_then(base_encoding),
                match get(doc, dict, b"Differences") {
                    Some(Object::Array(items)) => Some(items),
                    _ => None,
                },
            ),
            _ => (None, None),
        };
        let builtin = if named_base.is_none() {
            descriptor.and_then(|d| {
                if let Some(Object::Stream(s)) = get(doc, d, b"FontFile") {
                    return type1_builtin_encoding(&stream_data(doc, s, FONT_PROGRAM_LIMIT)?);
                }
                if let Some(Object::Stream(s)) = get(doc, d, b"FontFile3") {
                    return cff_builtin_encoding(&stream_data(doc, s, FONT_PROGRAM_LIMIT)?);
                }
                None
            })
        } else {
            None
        };
        let table: Option<&[u16; 256]> = named_base.or(match subtype {
            // A built-in encoding is complete: codes it leaves out have no character.
            _ if builtin.is_some() => None,
            b"TrueType" => Some(&WIN_ANSI),
            // Type 3 fonts have no built-in encoding; only /Differences names their glyphs.
            b"Type3" => None,
            _ if base.starts_with("Symbol") || base.starts_with("ZapfDingbats") => None,
            _ => Some(&STANDARD),
        });

        let mut names: Vec<Option<Vec<u8>>> = vec![None; 256];
        if let Some(builtin) = builtin {
            for (code, name) in builtin {
                names[code as usize] = Some(name);
            }
        }
        if let Some(items) = differences {
            let mut code = 0usize;
            for item in items {
                match super::resolve(doc, item) {
                    Object::Integer(n) => code = (*n).clamp(0, 256) as usize,
                    Object::Real(n) => code = (*n as i64).clamp(0, 256) as usize,
                    Object::Name(name) => {
                        if code < 256 {
                            names[code] = Some(name.clone());
                        }
                        code += 1;
                    }
                    _ => {}
                }
            }
        }

        let mut texts: Vec<Option<String>> = Vec::with_capacity(256);
        for (code, name) in names.iter().enumerate() {
            let from_map = to_unicode.as_ref().and_then(|m| m.get(code as u32));
            let text = from_map
                .or_else(|| name.as_deref().and_then(glyph_name_text))
                .or_else(|| {
                    // A name the glyph list does not know means no text, not the base's.
                    if name.is_some() {
                        return None;
                    }
                    let unit = table?[code];
                    (unit != 0).then(|| char::from_u32(u32::from(unit)).map(String::from)).flatten()
                })
                .map(clean);
            texts.push(text);
        }

        // Widths: /Widths from /FirstChar, else the standard fonts' metrics, else a guess.
        let scale = if subtype == b"Type3" {
            match get(doc, font, b"FontMatrix") {
                Some(Object::Array(m)) => m.first().and_then(|v| super::number(doc, v)).unwrap_or(0.001),
                _ => 0.001,
            }
        } else {
            0.001
        };
        let missing = descriptor.and_then(|d| get_number(doc, d, b"MissingWidth")).unwrap_or(0.0) * scale;
        let mut widths = vec![f32::NAN; 256];
        let first = get_number(doc, font, b"FirstChar").unwrap_or(0.0).max(0.0) as usize;
        if let Some(Object::Array(list)) = get(doc, font, b"Widths") {
            for (i, w) in list.iter().enumerate() {
                if let (Some(slot), Some(w)) = (widths.get_mut(first + i), super::number(doc, w)) {
                    *slot = w * scale;
                }
            }
        }
        let standard = standard_widths(&base);
        let monospace = is_monospace(&base);
        for (code, slot) in widths.iter_mut().enumerate() {
            if !slot.is_nan() {
                continue;
            }
            let ch = texts[code].as_deref().and_then(|t| t.chars().next());
            *slot = if monospace {
                0.6
            } else if let (Some(table), Some(c)) = (standard, ch.filter(|c| (' '..='~').contains(c))) {
                f32::from(table[c as usize - 32]) / 1000.0
            } else if missing > 0.0 {
                missing
            } else {
                0.5
            };
        }
        Self { kind: Kind::Simple { texts, widths }, to_unicode, vertical: false }
    }

    fn load_composite(doc: &Document, font: &Dictionary, to_unicode: Option<ToUnicode>) -> Self {
        let (source, vertical) = match get(doc, font, b"Encoding") {
            Some(Object::Name(name)) => match Predefined::from_name(name) {
                Some((p, v)) => (CodeSource::Predefined(p), v),
                None => (CodeSource::Predefined(Predefined::Identity), false),
            },
            Some(Object::Stream(s)) => {
                let cmap = stream_data(doc, s, FONT_PROGRAM_LIMIT).map(|d| EncodingCMap::parse(&d)).unwrap_or_default();
                let vertical = cmap.vertical;
                (CodeSource::Embedded(cmap), vertical)
            }
            _ => (CodeSource::Predefined(Predefined::Identity), false),
        };
        let descendant = match get(doc, font, b"DescendantFonts") {
            Some(Object::Array(list)) => list.first().map(|d| super::resolve(doc, d)),
            Some(other) => Some(other),
            None => None,
        };
        let descendant = match descendant {
            Some(Object::Dictionary(d)) => Some(d),
            _ => None,
        };
        let mut widths = CidWidths { default: 1.0, ..Default::default() };
        let mut cid_texts = HashMap::new();
        if let Some(cid_font) = descendant {
            if let Some(dw) = get_number(doc, cid_font, b"DW") {
                widths.default = dw / 1000.0;
            }
            if let Some(Object::Array(w)) = get(doc, cid_font, b"W") {
                read_cid_widths(doc, w, &mut widths);
            }
            // Only an Identity font without a map needs the font program (inverting a large
            // CJK font's tables is not free, so a font with a ToUnicode map skips it).
            let identity = matches!(source, CodeSource::Predefined(Predefined::Identity))
                || matches!(&source, CodeSource::Embedded(c) if c.parent.is_none());
            if identity && to_unicode.is_none() {
                cid_texts = embedded_cid_texts(doc, cid_font);
            }
        }
        Self { kind: Kind::Composite { source, widths, cid_texts }, to_unicode, vertical }
    }

    /// Splits `bytes` into codes and appends them to `out`.
    pub(super) fn decode(&self, bytes: &[u8], out: &mut Vec<Code>) {
        match &self.kind {
            Kind::Simple { texts, widths } => {
                for &b in bytes {
                    let text = texts[b as usize].clone().unwrap_or_default();
                    out.push(Code { text, width: widths[b as usize], is_space: b == 32 });
                }
            }
            Kind::Composite { source, widths, cid_texts } => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    let len = match source {
                        CodeSource::Predefined(p) => p.code_len(rest),
                        CodeSource::Embedded(cmap) => cmap.code_len(rest),
                    }
                    .clamp(1, rest.len());
                    let (code_bytes, tail) = rest.split_at(len);
                    rest = tail;
                    let code = code_value(code_bytes);
                    let predefined = match source {
                        CodeSource::Predefined(p) => Some(*p),
                        CodeSource::Embedded(cmap) => cmap.parent,
                    };
                    let cid = match source {
                        CodeSource::Predefined(Predefined::Identity) => Some(code),
                        CodeSource::Embedded(cmap) => cmap.cid(code),
                        CodeSource::Predefined(_) => None,
                    };
                    let text = self
                        .to_unicode
                        .as_ref()
                        .and_then(|m| m.get(code))
                        .or_else(|| predefined.and_then(|p| p.decode(code_bytes)))
                        .or_else(|| cid.and_then(|c| cid_texts.get(&c).cloned()))
                        .map(clean)
                        .unwrap_or_default();
                    let width = match (cid, predefined) {
                        (Some(cid), _) => widths.get(cid),
                        // Without CIDs (predefined CMaps are not shipped) half-width codes
                        // are taken to be half as wide as the default.
                        (None, Some(p)) if p.is_narrow(code_bytes, Some(&text)) => widths.default / 2.0,
                        _ => widths.default,
                    };
                    out.push(Code { text, width, is_space: len == 1 && code == 32 });
                }
            }
        }
    }
}

fn read_cid_widths(doc: &Document, w: &[Object], widths: &mut CidWidths) {
    let mut i = 0;
    while i < w.len() && widths.singles.len() < 1 << 20 && widths.ranges.len() < 1 << 16 {
        let Some(first) = super::number(doc, &w[i]) else { break };
        match w.get(i + 1).map(|o| super::resolve(doc, o)) {
            Some(Object::Array(list)) => {
                for (k, v) in list.iter().enumerate().take(1 << 16) {
                    if let Some(v) = super::number(doc, v) {
                        widths.singles.insert((first as u32).saturating_add(k as u32), v / 1000.0);
                    }
                }
                i += 2;
            }
            Some(last) => {
                let (Some(last), Some(v)) =
                    (super::number(doc, last), w.get(i + 2).and_then(|o| super::number(doc, o)))
                else {
                    break;
                };
                if last >= first {
                    widths.ranges.push((first as u32, last as u32, v / 1000.0));
                }
                i += 3;
            }
            None => break,
        }
    }
}

/// CID to text for a CIDFontType2 (TrueType) font from its embedded program: CID to glyph
/// through `/CIDToGIDMap`, glyph to Unicode through the program's tables.
fn embedded_cid_texts(doc: &Document, cid_font: &Dictionary) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    let Some(Object::Dictionary(descriptor)) = get(doc, cid_font, b"FontDescriptor") else { return out };
    let program = [b"FontFile2".as_slice(), b"FontFile3"].iter().find_map(|key| match get(doc, descriptor, key) {
        Some(Object::Stream(s)) => stream_data(doc, s, FONT_PROGRAM_LIMIT),
        _ => None,
    });
    let Some(program) = program else { return out };
    let glyph_texts = truetype_glyph_texts(&program);
    if glyph_texts.is_empty() {
        return out;
    }
    match get(doc, cid_font, b"CIDToGIDMap") {
        Some(Object::Stream(s)) => {
            let Some(map) = stream_data(doc, s, 1 << 20) else { return out };
            for (cid, gid) in map.chunks_exact(2).enumerate() {
                let gid = u16::from_be_bytes([gid[0], gid[1]]);
                if let Some(text) = glyph_texts.get(&gid) {
                    out.insert(cid as u32, text.clone());
                }
            }
        }
        _ => {
            out = glyph_texts.into_iter().map(|(gid, text)| (u32::from(gid), text)).collect();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_type1_encoding_is_read_from_the_clear_text() {
        let program = b"%!PS-AdobeFont-1.0: CMR10\n/Encoding 256 array\n0 1 255 {1 index exch /.notdef put} for\n\
            dup 12 /fi put\ndup 65 /A put\nreadonly def\ncurrentdict end\ncurrentfile eexec\x80\x81garbage";
        let map = type1_builtin_encoding(program).unwrap();
        assert_eq!(map.get(&12).map(Vec::as_slice), Some(b"fi".as_slice()));
        assert_eq!(map.get(&65).map(Vec::as_slice), Some(b"A".as_slice()));
        assert_eq!(map.len(), 2);
        assert!(type1_builtin_encoding(b"/Encoding StandardEncoding def").is_none());
    }

    #[test]
    fn simple_font_with_differences() {
        let doc = Document::new();
        let mut enc = Dictionary::new();
        enc.set("Type", Object::Name(b"Encoding".to_vec()));
        enc.set("BaseEncoding", Object::Name(b"WinAnsiEncoding".to_vec()));
        enc.set(
            "Differences",
            Object::Array(vec![
                Object::Integer(65),
                Object::Name(b"germandbls".to_vec()),
                Object::Name(b"g7".to_vec()),
            ]),
        );
        let mut font = Dictionary::new();
        font.set("Type", Object::Name(b"Font".to_vec()));
        font.set("Subtype", Object::Name(b"Type1".to_vec()));
        font.set("BaseFont", Object::Name(b"Helvetica".to_vec()));
        font.set("Encoding", Object::Dictionary(enc));
        let font = Font::load(&doc, &font);
        let mut codes = Vec::new();
        font.decode(b"A B\x80", &mut codes);
        let text: Vec<_> = codes.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(text, ["ß", " ", "", "€"]);
        assert!(codes[1].is_space);
        // Helvetica's space is 278/1000 em wide.
        assert!((codes[1].width - 0.278).abs() < 1e-6);
    }
}
