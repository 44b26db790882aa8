//! CMaps: how the bytes of a string split into character codes, and what a code means.
//!
//! Three kinds matter for text: a font's `/ToUnicode` stream (code to Unicode text), an
//! embedded `/Encoding` CMap stream of a composite font (codespace, and code to CID), and the
//! predefined CJK CMaps that `/Encoding` can name. The predefined ones are not shipped as
//! tables here: those this extractor supports are, by construction, a legacy character set
//! (GBK, Big5, Shift_JIS, EUC-JP, EUC-KR, or Unicode itself) with a known byte structure, so
//! the code bytes are decoded with `encoding_rs` instead of being mapped to CIDs first.

use std::collections::HashMap;

use encoding_rs::{BIG5, EUC_JP, EUC_KR, Encoding, GB18030, GBK, SHIFT_JIS};

use super::lexer::{Lexer, Operand};
use super::tables::GLYPH_LIST;

/// Ranges up to this many codes are expanded into the lookup table; larger ones (which only
/// sensible maps of 3- or 4-byte codes have) stay ranges so that a hostile map cannot make us
/// allocate billions of entries.
const EXPAND_LIMIT: u32 = 1 << 16;
/// A bound on the expanded entries of one map.
const TOTAL_EXPAND_LIMIT: usize = 1 << 20;
/// The longest text (in bytes) one code may stand for.
const MAX_CODE_TEXT: usize = 64;

/// One `begincodespacerange` entry: codes of `len` bytes whose every byte lies between the
/// corresponding bytes of `lo` and `hi`.
#[derive(Debug, Clone)]
struct CodeRange {
    lo: [u8; 4],
    hi: [u8; 4],
    len: usize,
}

/// The codespace of a CMap: how many bytes the next code takes.
#[derive(Debug, Clone, Default)]
pub(super) struct Codespace {
    ranges: Vec<CodeRange>,
}

impl Codespace {
    /// Adds the `lo hi` string pairs of a `begincodespacerange` block.
    fn add_ranges(&mut self, operands: &[Operand]) {
        for pair in operands.chunks_exact(2) {
            if let [Operand::String(lo), Operand::String(hi)] = pair {
                self.add(lo, hi);
            }
        }
    }

    fn add(&mut self, lo: &[u8], hi: &[u8]) {
        if lo.is_empty() || lo.len() > 4 || lo.len() != hi.len() || self.ranges.len() >= 1024 {
            return;
        }
        let mut range = CodeRange { lo: [0; 4], hi: [0; 4], len: lo.len() };
        range.lo[..lo.len()].copy_from_slice(lo);
        range.hi[..hi.len()].copy_from_slice(hi);
        self.ranges.push(range);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The length in bytes of the code at the start of `bytes` (at least 1, at most the
    /// length of `bytes`). A code that matches no range takes the length of the shortest
    /// range, as the PDF specification (9.7.6.2) suggests.
    pub(super) fn code_len(&self, bytes: &[u8]) -> usize {
        for len in 1..=4.min(bytes.len()) {
            let code = &bytes[..len];
            let fits =
                |r: &CodeRange| r.len == len && code.iter().enumerate().all(|(i, &b)| r.lo[i] <= b && b <= r.hi[i]);
            if self.ranges.iter().any(fits) {
                return len;
            }
        }
        let shortest = self.ranges.iter().map(|r| r.len).min().unwrap_or(1);
        shortest.clamp(1, bytes.len().max(1))
    }
}

/// Reads a code given as a byte string (big-endian).
pub(super) fn code_value(bytes: &[u8]) -> u32 {
    bytes.iter().take(4).fold(0u32, |acc, &b| acc << 8 | u32::from(b))
}

/// Text for a UTF-16BE byte string, as ToUnicode maps give it.
fn utf16be_text(bytes: &[u8]) -> String {
    let units = bytes.chunks(2).map(|c| if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) });
    char::decode_utf16(units).filter_map(Result::ok).collect()
}

/// Unicode text for a glyph name: the Adobe Glyph List, `uniXXXX`, `uXXXX[XX]`, and names
/// with a suffix (`a.sc`) or made of components (`f_f_i`). Names that carry no meaning
/// (`g123`, `cid456`, `.notdef`) give `None`.
pub(super) fn glyph_name_text(name: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(name).ok()?;
    // A suffix after a period is a variant of the same character.
    let base = name.split('.').next().unwrap_or("");
    if base.is_empty() {
        return None;
    }
    if base.contains('_') {
        let parts: Option<String> = base.split('_').map(single_glyph_name).collect();
        return parts.filter(|s| !s.is_empty());
    }
    single_glyph_name(base)
}

fn single_glyph_name(name: &str) -> Option<String> {
    if let Ok(i) = GLYPH_LIST.binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes())) {
        return Some(GLYPH_LIST[i].1.to_string());
    }
    let hex_units = |digits: &str, width: usize| -> Option<Vec<u32>> {
        if digits.is_empty() || !digits.len().is_multiple_of(width) || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        (0..digits.len() / width).map(|i| u32::from_str_radix(&digits[i * width..(i + 1) * width], 16).ok()).collect()
    };
    if let Some(rest) = name.strip_prefix("uni") {
        let units = hex_units(rest, 4)?;
        let units: Vec<u16> = units.into_iter().map(|u| u as u16).collect();
        let text: String = char::decode_utf16(units).filter_map(Result::ok).collect();
        return (!text.is_empty()).then_some(text);
    }
    if let Some(rest) = name.strip_prefix('u')
        && (4..=6).contains(&rest.len())
    {
        let value = hex_units(rest, rest.len())?;
        return char::from_u32(value[0]).map(String::from);
    }
    None
}

/// A range mapping kept unexpanded because it is too large.
#[derive(Debug, Clone)]
struct BigRange {
    lo: u32,
    hi: u32,
    start: Vec<u16>,
}

/// A `/ToUnicode` CMap: code to Unicode text.
#[derive(Debug, Clone, Default)]
pub(super) struct ToUnicode {
    map: HashMap<u32, String>,
    big: Vec<BigRange>,
    pub(super) codespace: Codespace,
}

impl ToUnicode {
    pub(super) fn parse(data: &[u8]) -> Self {
        let mut cmap = Self::default();
        let mut lexer = Lexer::new(data);
        let mut operands = Vec::new();
        while let Some(op) = lexer.next_operation(&mut operands) {
            match op {
                b"endcodespacerange" => cmap.codespace.add_ranges(&operands),
                b"endbfchar" => {
                    for pair in operands.chunks_exact(2) {
                        let Operand::String(code) = &pair[0] else { continue };
                        let text = match &pair[1] {
                            Operand::String(dst) => utf16be_text(dst),
                            Operand::Name(name) => glyph_name_text(name).unwrap_or_default(),
                            _ => continue,
                        };
                        cmap.insert(code_value(code), text);
                    }
                }
                b"endbfrange" => {
                    for triple in operands.chunks_exact(3) {
                        let (Operand::String(lo), Operand::String(hi)) = (&triple[0], &triple[1]) else { continue };
                        let (lo, hi) = (code_value(lo), code_value(hi));
                        if hi < lo {
                            continue;
                        }
                        match &triple[2] {
                            Operand::String(dst) => cmap.add_range(lo, hi, dst),
                            Operand::Array(items) => {
                                for (i, item) in items.iter().enumerate().take((hi - lo) as usize + 1) {
                                    match item {
                                        Operand::String(dst) => {
                                            cmap.insert(lo.saturating_add(i as u32), utf16be_text(dst))
                                        }
                                        Operand::Name(name) => cmap.insert(
                                            lo.saturating_add(i as u32),
                                            glyph_name_text(name).unwrap_or_default(),
                                        ),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        cmap
    }

    fn insert(&mut self, code: u32, mut text: String) {
        // One code stands for a character or a ligature, never for pages of text.
        if text.len() > MAX_CODE_TEXT {
            let cut = (0..=MAX_CODE_TEXT).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.truncate(cut);
        }
        if self.map.len() < TOTAL_EXPAND_LIMIT {
            self.map.insert(code, text);
        }
    }

    /// A bfrange whose destination is a string: the last UTF-16 unit counts up with the code.
    fn add_range(&mut self, lo: u32, hi: u32, dst: &[u8]) {
        let units: Vec<u16> = dst
            .chunks(2)
            .map(|c| if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) })
            .collect();
        if units.is_empty() || units.len() > MAX_CODE_TEXT / 2 {
            return;
        }
        if hi - lo >= EXPAND_LIMIT || self.map.len() + (hi - lo) as usize >= TOTAL_EXPAND_LIMIT {
            if self.big.len() < 4096 {
                self.big.push(BigRange { lo, hi, start: units });
            }
            return;
        }
        for code in lo..=hi {
            self.map.insert(code, range_text(&units, code - lo));
        }
    }

    pub(super) fn get(&self, code: u32) -> Option<String> {
        if let Some(text) = self.map.get(&code) {
            return Some(text.clone());
        }
        self.big.iter().rev().find(|r| r.lo <= code && code <= r.hi).map(|r| range_text(&r.start, code - r.lo))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty() && self.big.is_empty()
    }
}

fn range_text(start: &[u16], offset: u32) -> String {
    let mut units = start.to_vec();
    if let Some(last) = units.last_mut() {
        *last = (u32::from(*last) + offset) as u16;
    }
    char::decode_utf16(units).filter_map(Result::ok).collect()
}

/// What the codes of a predefined CMap are, for the CMaps whose codes are a known character
/// set. The byte length of each code follows that set's structure, which is what the CMap's
/// codespace ranges describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Predefined {
    /// `Identity-H/V`: two-byte codes that are CIDs, with no meaning without the font.
    Identity,
    /// `Uni*-UCS2-*`: two-byte codes that are UCS-2.
    Ucs2,
    /// `Uni*-UTF16-*`: UTF-16BE, surrogate pairs taking four bytes.
    Utf16,
    /// `Uni*-UTF32-*`.
    Utf32,
    /// `Uni*-UTF8-*`.
    Utf8,
    /// A multi-byte legacy set decoded with `encoding_rs`.
    Legacy(LegacySet),
    /// ISO-2022 style row/cell codes (`H`, `V`, `GB-H`, `KSC-H`): two 7-bit bytes, which are
    /// the EUC form of the set once 0x80 is added to each.
    RowCell(&'static Encoding),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LegacySet {
    Gbk,
    Gb18030,
    Big5,
    ShiftJis,
    EucJp,
    EucKr,
}

impl Predefined {
    /// The predefined CMap called `name`, and whether it is for vertical writing.
    pub(super) fn from_name(name: &[u8]) -> Option<(Self, bool)> {
        let name = std::str::from_utf8(name).ok()?;
        let (base, vertical) = match name {
            "H" => ("", false),
            "V" => ("", true),
            _ => {
                if let Some(b) = name.strip_suffix("-H") {
                    (b, false)
                } else if let Some(b) = name.strip_suffix("-V") {
                    (b, true)
                } else {
                    return None;
                }
            }
        };
        // Half-width variants (`-HW-H`) and proportional ones behave like their base.
        let base = base.strip_suffix("-HW").unwrap_or(base);
        let kind = match base {
            "Identity" => Self::Identity,
            "" | "Add" | "Ext" | "NWP" => Self::RowCell(EUC_JP),
            "GB" | "GBT" => Self::RowCell(GBK),
            "KSC" => Self::RowCell(EUC_KR),
            "EUC" => Self::Legacy(LegacySet::EucJp),
            _ if base.starts_with("Uni") => {
                if base.ends_with("UCS2") {
                    Self::Ucs2
                } else if base.ends_with("UTF16") {
                    Self::Utf16
                } else if base.ends_with("UTF32") {
                    Self::Utf32
                } else if base.ends_with("UTF8") {
                    Self::Utf8
                } else {
                    return None;
                }
            }
            "GBK2K" => Self::Legacy(LegacySet::Gb18030),
            _ if base.starts_with("GB") && base.ends_with("EUC") => Self::Legacy(LegacySet::Gbk),
            _ if base.ends_with("B5") => Self::Legacy(LegacySet::Big5),
            _ if base.ends_with("RKSJ") => Self::Legacy(LegacySet::ShiftJis),
            "KSC-EUC" | "KSCpc-EUC" | "KSCms-UHC" => Self::Legacy(LegacySet::EucKr),
            _ => return None,
        };
        Some((kind, vertical))
    }

    /// The byte length of the code at the start of `bytes` (at least 1).
    pub(super) fn code_len(self, bytes: &[u8]) -> usize {
        let first = bytes[0];
        let len = match self {
            Self::Identity | Self::Ucs2 | Self::RowCell(_) => 2,
            Self::Utf16 => {
                if (0xD8..=0xDB).contains(&first) && bytes.len() >= 4 {
                    4
                } else {
                    2
                }
            }
            Self::Utf32 => 4,
            Self::Utf8 => match first {
                0xF0..=0xF7 => 4,
                0xE0..=0xEF => 3,
                0xC0..=0xDF => 2,
                _ => 1,
            },
            Self::Legacy(set) => match set {
                LegacySet::Gbk | LegacySet::Big5 | LegacySet::EucKr => {
                    if first <= 0x80 {
                        1
                    } else {
                        2
                    }
                }
                LegacySet::Gb18030 => {
                    if first <= 0x80 {
                        1
                    } else if bytes.len() >= 4 && (0x30..=0x39).contains(&bytes.get(1).copied().unwrap_or(0)) {
                        4
                    } else {
                        2
                    }
                }
                LegacySet::ShiftJis => {
                    if (0x81..=0x9F).contains(&first) || (0xE0..=0xFC).contains(&first) {
                        2
                    } else {
                        1
                    }
                }
                LegacySet::EucJp => match first {
                    0x8F => 3,
                    0x8E | 0xA1..=0xFE => 2,
                    _ => 1,
                },
            },
        };
        len.min(bytes.len())
    }

    /// The Unicode text of one code, or `None` when the code has no meaning by itself
    /// (`Identity`) or does not decode.
    pub(super) fn decode(self, code: &[u8]) -> Option<String> {
        let text = match self {
            Self::Identity => return None,
            Self::Ucs2 | Self::Utf16 => utf16be_text(code),
            Self::Utf32 => char::from_u32(code_value(code)).map(String::from).unwrap_or_default(),
            Self::Utf8 => String::from_utf8_lossy(code).into_owned(),
            Self::RowCell(encoding) => {
                let euc: Vec<u8> = code.iter().map(|b| b | 0x80).collect();
                encoding.decode_without_bom_handling(&euc).0.into_owned()
            }
            Self::Legacy(set) => {
                let encoding = match set {
                    LegacySet::Gbk => GBK,
                    LegacySet::Gb18030 => GB18030,
                    LegacySet::Big5 => BIG5,
                    LegacySet::ShiftJis => SHIFT_JIS,
                    LegacySet::EucJp => EUC_JP,
                    LegacySet::EucKr => EUC_KR,
                };
                encoding.decode_without_bom_handling(code).0.into_owned()
            }
        };
        (!text.is_empty() && !text.contains('\u{FFFD}')).then_some(text)
    }

    /// Whether a code is a one-byte (half-width) code, for width estimates.
    pub(super) fn is_narrow(self, code: &[u8], text: Option<&str>) -> bool {
        match self {
            Self::Legacy(_) | Self::Utf8 => code.len() == 1,
            Self::Ucs2 | Self::Utf16 | Self::Utf32 => {
                text.and_then(|t| t.chars().next()).is_some_and(|c| (c as u32) < 0x1100)
            }
            Self::Identity | Self::RowCell(_) => false,
        }
    }
}

/// An embedded encoding CMap of a composite font: its codespace, its code-to-CID mapping
/// and the predefined CMap it builds on (`usecmap`), if any.
#[derive(Debug, Clone, Default)]
pub(super) struct EncodingCMap {
    pub(super) codespace: Codespace,
    cids: HashMap<u32, u32>,
    cid_ranges: Vec<(u32, u32, u32)>,
    pub(super) parent: Option<Predefined>,
    pub(super) vertical: bool,
}

impl EncodingCMap {
    pub(super) fn parse(data: &[u8]) -> Self {
        let mut cmap = Self::default();
        let mut lexer = Lexer::new(data);
        let mut operands = Vec::new();
        while let Some(op) = lexer.next_operation(&mut operands) {
            match op {
                b"endcodespacerange" => cmap.codespace.add_ranges(&operands),
                b"endcidchar" => {
                    for pair in operands.chunks_exact(2) {
                        if let [Operand::String(code), Operand::Number(cid)] = pair
                            && cmap.cids.len() < TOTAL_EXPAND_LIMIT
                        {
                            cmap.cids.insert(code_value(code), *cid as u32);
                        }
                    }
                }
                b"endcidrange" => {
                    for triple in operands.chunks_exact(3) {
                        if let [Operand::String(lo), Operand::String(hi), Operand::Number(cid)] = triple
                            && cmap.cid_ranges.len() < 65536
                        {
                            cmap.cid_ranges.push((code_value(lo), code_value(hi), *cid as u32));
                        }
                    }
                }
                b"usecmap" => {
                    if let Some(Operand::Name(name)) = operands.last() {
                        cmap.parent = Predefined::from_name(name).map(|(p, _)| p);
                    }
                }
                b"def" => {
                    if let [Operand::Name(key), Operand::Number(value)] = operands.as_slice()
                        && key == b"WMode"
                    {
                        cmap.vertical = *value == 1.0;
                    }
                }
                _ => {}
            }
        }
        cmap
    }

    pub(super) fn code_len(&self, bytes: &[u8]) -> usize {
        if self.codespace.is_empty() {
            return self.parent.unwrap_or(Predefined::Identity).code_len(bytes);
        }
        self.codespace.code_len(bytes)
    }

    pub(super) fn cid(&self, code: u32) -> Option<u32> {
        if let Some(&cid) = self.cids.get(&code) {
            return Some(cid);
        }
        self.cid_ranges
            .iter()
            .rev()
            .find(|(lo, hi, _)| *lo <= code && code <= *hi)
            .map(|(lo, _, cid)| cid.saturating_add(code - lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_unicode_chars_ranges_and_arrays() {
        let data = b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap
            /CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def
            1 begincodespacerange <0000> <FFFF> endcodespacerange
            2 beginbfchar <0003> <0020> <0011> <D83DDE00> endbfchar
            2 beginbfrange <0024> <0026> <0041> <0030> <0031> [<0066006C> /ffi] endbfrange
            1 beginbfrange <00000000> <FFFFFFFF> <4E00> endbfrange
            endcmap CMapName currentdict /CMap defineresource pop end end";
        let cmap = ToUnicode::parse(data);
        assert_eq!(cmap.get(3).as_deref(), Some(" "));
        assert_eq!(cmap.get(0x11).as_deref(), Some("\u{1F600}"));
        assert_eq!(cmap.get(0x25).as_deref(), Some("B"));
        assert_eq!(cmap.get(0x30).as_deref(), Some("fl"));
        assert_eq!(cmap.get(0x31).as_deref(), Some("\u{FB03}"));
        assert_eq!(cmap.get(0x0001_0002).as_deref(), Some("\u{4E02}"));
        assert_eq!(cmap.codespace.code_len(&[0, 3]), 2);
    }

    #[test]
    fn predefined_cmaps_decode_their_character_sets() {
        let (ucs2, vertical) = Predefined::from_name(b"UniGB-UCS2-V").unwrap();
        assert!(vertical);
        assert_eq!(ucs2.decode(&[0x70, 0x6B]).as_deref(), Some("火"));
        let (gbk, _) = Predefined::from_name(b"GBK-EUC-H").unwrap();
        let bytes = [b'A', 0xD6, 0xD0];
        assert_eq!(gbk.code_len(&bytes), 1);
        assert_eq!(gbk.code_len(&bytes[1..]), 2);
        assert_eq!(gbk.decode(&bytes[1..]).as_deref(), Some("中"));
        let (rowcell, vertical) = Predefined::from_name(b"V").unwrap();
        assert!(vertical);
        assert_eq!(rowcell.decode(&[0x24, 0x22]).as_deref(), Some("あ"));
        let (sjis, _) = Predefined::from_name(b"90ms-RKSJ-H").unwrap();
        assert_eq!(sjis.decode(&[0x82, 0xA0]).as_deref(), Some("あ"));
        let (big5, _) = Predefined::from_name(b"ETen-B5-H").unwrap();
        assert_eq!(big5.decode(&[0xA4, 0xA4]).as_deref(), Some("中"));
        let (utf16, _) = Predefined::from_name(b"UniJIS-UTF16-H").unwrap();
        assert_eq!(utf16.code_len(&[0xD8, 0x3D, 0xDE, 0x00]), 4);
        assert_eq!(Predefined::from_name(b"Identity-H"), Some((Predefined::Identity, false)));
        assert_eq!(Predefined::from_name(b"KSCms-UHC-HW-H").map(|p| p.0), Some(Predefined::Legacy(LegacySet::EucKr)));
        assert!(Predefined::from_name(b"WinAnsiEncoding").is_none());
    }

    #[test]
    fn glyph_names() {
        assert_eq!(glyph_name_text(b"adieresis").as_deref(), Some("ä"));
        assert_eq!(glyph_name_text(b"uni4E2D").as_deref(), Some("中"));
        assert_eq!(glyph_name_text(b"u1F600").as_deref(), Some("\u{1F600}"));
        assert_eq!(glyph_name_text(b"f_f_i").as_deref(), Some("ffi"));
        assert_eq!(glyph_name_text(b"a.sc").as_deref(), Some("a"));
        assert_eq!(glyph_name_text(b"g123"), None);
        assert_eq!(glyph_name_text(b".notdef"), None);
    }

    #[test]
    fn embedded_encoding_cmap() {
        let data = b"/WMode 1 def 1 begincodespacerange <00> <80> endcodespacerange
            1 begincodespacerange <8140> <FEFE> endcodespacerange
            1 begincidrange <8140> <8150> 100 endcidrange 1 begincidchar <41> 34 endcidchar";
        let cmap = EncodingCMap::parse(data);
        assert!(cmap.vertical);
        assert_eq!(cmap.code_len(&[0x41, 0x81]), 1);
        assert_eq!(cmap.code_len(&[0x81, 0x42]), 2);
        assert_eq!(cmap.cid(0x8142), Some(102));
        assert_eq!(cmap.cid(0x41), Some(34));
    }
}
