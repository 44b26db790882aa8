//! Word documents (.docx): a zip package of XML parts, read with `zip` and
//! `quick-xml`.
//!
//! The main document part (`word/document.xml`, or wherever the package's
//! relationships point) gives the text: paragraphs, list items with their
//! numbers, tables as rows of cells, text boxes and the text of hyperlinks,
//! fields and content controls. `word/styles.xml` says which paragraphs are
//! headings: style ids are often localised (`1`, `a3`, `Heading1Char`…), so
//! a style is recognised by its name (`heading 1`, `标题 1`, `Title`) or its
//! outline level, following `w:basedOn`. `word/numbering.xml` gives list
//! numbers and `docProps/core.xml` the title.
//!
//! Everything read is bounded: the number of zip entries, the bytes unpacked
//! from each part and in total (read through `Read::take`, never trusting
//! the sizes a zip declares), and the nesting depth of the XML; DTDs are
//! refused, so no entity is ever expanded. A zip bomb or an XML bomb ends in
//! a [`ParseErrorKind::TooLarge`] or [`ParseErrorKind::Corrupt`] error after
//! a bounded amount of work.

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read};

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use zip::ZipArchive;
use zip::result::ZipError;

use super::html::{MAX_HEADING_CHARS, Outline};
use super::parse::{ParseError, ParseErrorKind, ParsedDocument, Progress};

/// Real documents have a few dozen parts; ten thousand entries is far beyond
/// any of them and keeps name look-ups cheap.
const MAX_ENTRIES: usize = 10_000;
/// The main document part: 64 MiB of XML is several thousand pages of text.
const MAX_DOCUMENT_XML: u64 = 64 << 20;
/// Styles and numbering definitions are small (tens of KiB) in practice.
const MAX_DEFINITIONS_XML: u64 = 16 << 20;
/// Relationship parts and document properties are a few KiB.
const MAX_SMALL_XML: u64 = 1 << 20;
/// All parts together: what one import may unpack, whatever the parts are.
const MAX_TOTAL_UNPACKED: u64 = 96 << 20;
/// Word nests tables in tables and text boxes in paragraphs, but never more
/// than a few dozen levels; deeper XML is an attack on the parser.
const MAX_XML_DEPTH: usize = 256;
/// How many `w:basedOn` links are followed when resolving a style.
const MAX_STYLE_CHAIN: usize = 10;
/// A list number's template (`lvlText`) longer than this is not a number.
const MAX_LEVEL_TEXT: usize = 32;
/// How many XML events pass between two progress reports.
const PROGRESS_EVERY: u32 = 4096;

const MAIN_DOCUMENT: &str = "word/document.xml";

/// Parses a docx file into sections.
pub fn parse(bytes: &[u8], progress: Progress<'_>) -> Result<ParsedDocument, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::new(ParseErrorKind::Empty, "the docx file is empty"));
    }
    refuse_ole(bytes)?;
    let mut package = Package::open(bytes)?;
    let root_rels = package.read("_rels/.rels", MAX_SMALL_XML)?.map(|x| relationships(&x)).transpose()?;
    let root_rels = root_rels.unwrap_or_default();
    let main = target_of(&root_rels, "/officeDocument", "").unwrap_or_else(|| MAIN_DOCUMENT.to_owned());
    let document = package.read(&main, MAX_DOCUMENT_XML)?;
    let document = match document {
        Some(d) => d,
        // A package whose relationships point elsewhere may still have the
        // conventional part name.
        None if main != MAIN_DOCUMENT => package.read(MAIN_DOCUMENT, MAX_DOCUMENT_XML)?.ok_or_else(no_document)?,
        None => return Err(no_document()),
    };
    progress(0.05);

    let (dir, file) = main.rsplit_once('/').unwrap_or(("", main.as_str()));
    let doc_rels_name = if dir.is_empty() { format!("_rels/{file}.rels") } else { format!("{dir}/_rels/{file}.rels") };
    let doc_rels = package.read(&doc_rels_name, MAX_SMALL_XML)?.map(|x| relationships(&x)).transpose()?;
    let doc_rels = doc_rels.unwrap_or_default();
    let styles_name = target_of(&doc_rels, "/styles", dir).unwrap_or_else(|| "word/styles.xml".to_owned());
    let numbering_name = target_of(&doc_rels, "/numbering", dir).unwrap_or_else(|| "word/numbering.xml".to_owned());
    let styles = match package.read(&styles_name, MAX_DEFINITIONS_XML)? {
        Some(xml) => Styles::parse(&xml)?,
        None => Styles::default(),
    };
    let numbering = match package.read(&numbering_name, MAX_DEFINITIONS_XML)? {
        Some(xml) => Numbering::parse(&xml)?,
        None => Numbering::default(),
    };
    let core_name = target_of(&root_rels, "/core-properties", "").unwrap_or_else(|| "docProps/core.xml".to_owned());
    let core_title = match package.read(&core_name, MAX_SMALL_XML)? {
        Some(xml) => core_title(&xml)?,
        None => None,
    };
    progress(0.1);

    let mut walker = DocumentWalker::new(&styles, numbering);
    let total = document.len().max(1) as f32;
    let mut events = 0u32;
    walk_xml(&document, "the document text", |event, depth, position| {
        events = events.wrapping_add(1);
        if events.is_multiple_of(PROGRESS_EVERY) {
            progress(0.1 + 0.85 * (position as f32 / total));
        }
        walker.event(event, depth);
    })?;
    let doc = walker.finish(core_title);
    progress(1.0);
    Ok(doc)
}

fn no_document() -> ParseError {
    ParseError::new(ParseErrorKind::Corrupt, "the docx file is damaged: it has no word/document.xml part")
}

/// Password-protected Word files are not zip packages at all but OLE
/// compound files holding an `EncryptedPackage` stream; so are old `.doc`
/// files renamed to `.docx`. Both deserve a better message than "damaged".
fn refuse_ole(bytes: &[u8]) -> Result<(), ParseError> {
    const OLE_MAGIC: &[u8] = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1";
    if !bytes.starts_with(OLE_MAGIC) {
        return Ok(());
    }
    let marker: Vec<u8> = "EncryptedPackage".encode_utf16().flat_map(u16::to_le_bytes).collect();
    if bytes.windows(marker.len()).any(|w| w == marker) {
        return Err(ParseError::new(
            ParseErrorKind::Encrypted,
            "the docx file is password-protected; remove the password in Word and import it again",
        ));
    }
    Err(ParseError::new(
        ParseErrorKind::Corrupt,
        "the file is an old Word 97-2003 document (.doc), not a docx file; save it as .docx and import it again",
    ))
}

/// The zip package and what is left of the unpacking budget.
struct Package<'a> {
    archive: ZipArchive<Cursor<&'a [u8]>>,
    budget: u64,
}

impl<'a> Package<'a> {
    fn open(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| {
            ParseError::new(
                ParseErrorKind::Corrupt,
                format!(
                    "the docx file is damaged or is not a Word document (it cannot be opened as a zip archive: {e})"
                ),
            )
        })?;
        if archive.len() > MAX_ENTRIES {
            return Err(ParseError::new(
                ParseErrorKind::TooLarge,
                format!("the docx file has {} parts, more than the {MAX_ENTRIES} an import allows", archive.len()),
            ));
        }
        Ok(Self { archive, budget: MAX_TOTAL_UNPACKED })
    }

    /// The text of part `name` (None when the package has no such part),
    /// unpacking at most `cap` bytes of it and never more than the budget
    /// left. Part names are case-insensitive in a package (OPC), so a name
    /// that is not found as written is looked up ignoring case.
    fn read(&mut self, name: &str, cap: u64) -> Result<Option<String>, ParseError> {
        let name = name.trim_start_matches('/');
        let index = match self.archive.index_for_name(name) {
            Some(i) => i,
            None => {
                let found = self.archive.file_names().position(|n| n.is_ok_and(|n| n.eq_ignore_ascii_case(name)));
                match found {
                    Some(i) => i,
                    None => return Ok(None),
                }
            }
        };
        let limit = cap.min(self.budget);
        let damaged = |e: &dyn std::fmt::Display| {
            ParseError::new(
                ParseErrorKind::Corrupt,
                format!("the docx file is damaged: its part {name} cannot be read ({e})"),
            )
        };
        let entry = self.archive.by_index(index).map_err(|e| match e {
            ZipError::UnsupportedArchive(_) | ZipError::CompressionMethodNotSupported(_) => ParseError::new(
                ParseErrorKind::Corrupt,
                format!("the docx file uses a zip feature Word does not write ({e}); save it again from Word"),
            ),
            e => damaged(&e),
        })?;
        // The declared size is only a hint for the first allocation: a zip
        // bomb declares whatever it likes, and `take` is what bounds the read.
        let hint = entry.size().min(limit).min(1 << 20) as usize;
        let mut buf = Vec::with_capacity(hint);
        entry.take(limit + 1).read_to_end(&mut buf).map_err(|e| damaged(&e))?;
        if buf.len() as u64 > limit {
            return Err(ParseError::new(
                ParseErrorKind::TooLarge,
                format!(
                    "the docx file unpacks to more than an import allows (its part {name} is larger than {} MiB)",
                    limit >> 20
                ),
            ));
        }
        self.budget -= buf.len() as u64;
        Ok(Some(xml_text(buf)))
    }
}

/// Package parts are UTF-8 or UTF-16 with a byte-order mark. Bytes that are
/// not valid UTF-8 are replaced rather than refused: the rest of the text is
/// still worth importing.
fn xml_text(bytes: Vec<u8>) -> String {
    if let Some((encoding, bom)) = encoding_rs::Encoding::for_bom(&bytes) {
        return encoding.decode_without_bom_handling(&bytes[bom..]).0.into_owned();
    }
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Reads every event of one XML part, calling `on_event` with the event,
/// the depth of the element it belongs to (an element's own depth for its
/// start and end, its parent's for text) and the byte position reached.
/// Refuses DTDs (Word never writes one, and entity definitions are how XML
/// bombs work) and nesting deeper than [`MAX_XML_DEPTH`].
fn walk_xml(xml: &str, what: &str, mut on_event: impl FnMut(&Event<'_>, usize, u64)) -> Result<(), ParseError> {
    let mut reader = Reader::from_str(xml);
    let mut depth = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| {
            ParseError::new(
                ParseErrorKind::Corrupt,
                format!(
                    "the docx file is damaged: {what} is not well-formed XML ({e} at byte {})",
                    reader.error_position()
                ),
            )
        })?;
        match &event {
            Event::Eof => return Ok(()),
            Event::DocType(_) => {
                return Err(ParseError::new(
                    ParseErrorKind::Corrupt,
                    format!(
                        "the docx file is damaged or malicious: {what} declares a DTD, which Word documents never do"
                    ),
                ));
            }
            Event::Start(_) => {
                depth += 1;
                if depth > MAX_XML_DEPTH {
                    return Err(ParseError::new(
                        ParseErrorKind::TooLarge,
                        format!("the docx file is too complex: {what} is nested more than {MAX_XML_DEPTH} levels deep"),
                    ));
                }
                on_event(&event, depth, reader.buffer_position());
            }
            Event::Empty(_) => on_event(&event, depth + 1, reader.buffer_position()),
            Event::End(_) => {
                on_event(&event, depth, reader.buffer_position());
                depth = depth.saturating_sub(1);
            }
            _ => on_event(&event, depth, reader.buffer_position()),
        }
    }
}

/// The value of the attribute with local name `name` (`w:val` → `val`).
/// Duplicate checks are off: they cost time quadratic in the number of
/// attributes, and a repeated attribute is harmless here.
fn attr(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes().with_checks(false).flatten().find(|a| a.key.local_name().as_ref() == name).map(|a| {
        let raw = a.value.clone();
        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map(|v| v.into_owned())
            .unwrap_or_else(|_| raw.into_owned())
    })
}

fn local_name<'e>(event: &'e Event<'_>) -> Option<&'e str> {
    match event {
        Event::Start(e) | Event::Empty(e) => Some(e.local_name().into_inner()),
        Event::End(e) => Some(e.local_name().into_inner()),
        _ => None,
    }
}

/// Text content of a text, CDATA or reference event; `None` for the rest.
/// Character references and the five predefined entities are resolved; any
/// other reference is kept as written, since nothing may define it.
fn text_of(event: &Event<'_>) -> Option<String> {
    match event {
        Event::Text(t) => Some(t.xml10_content().into_owned()),
        Event::CData(c) => Some(c.xml10_content().into_owned()),
        Event::GeneralRef(r) => Some(match r.resolve_char_ref() {
            Ok(Some(c)) => c.to_string(),
            _ => match quick_xml::escape::resolve_predefined_entity(r) {
                Some(s) => s.to_owned(),
                None => format!("&{};", &**r),
            },
        }),
        _ => None,
    }
}

/// One `Relationship` of a `.rels` part.
#[derive(Debug, Default)]
struct Relationship {
    kind: String,
    target: String,
}

fn relationships(xml: &str) -> Result<Vec<Relationship>, ParseError> {
    let mut out = Vec::new();
    walk_xml(xml, "a relationships part", |event, _, _| {
        if let Event::Start(e) | Event::Empty(e) = event
            && e.local_name().as_ref() == "Relationship"
            && attr(e, "TargetMode").is_none_or(|m| m != "External")
        {
            out.push(Relationship {
                kind: attr(e, "Type").unwrap_or_default(),
                target: attr(e, "Target").unwrap_or_default(),
            });
        }
    })?;
    Ok(out)
}

/// The part name that a relationship whose type ends with `suffix` points
/// to, resolved against the folder `base` of the part that owns it.
fn target_of(rels: &[Relationship], suffix: &str, base: &str) -> Option<String> {
    let rel = rels.iter().find(|r| r.kind.ends_with(suffix) && !r.target.is_empty())?;
    let joined = match rel.target.strip_prefix('/') {
        Some(absolute) => absolute.to_owned(),
        None if base.is_empty() => rel.target.clone(),
        None => format!("{base}/{}", rel.target),
    };
    // Resolve "." and ".." segments, as in "../customXml/item1.xml".
    let mut segments: Vec<&str> = Vec::new();
    for segment in joined.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    Some(segments.join("/"))
}

/// The `dc:title` of `docProps/core.xml`, if it says anything.
fn core_title(xml: &str) -> Result<Option<String>, ParseError> {
    let mut title = String::new();
    let mut in_title = false;
    walk_xml(xml, "the document properties", |event, depth, _| match event {
        Event::Start(e) if depth == 2 && e.local_name().as_ref() == "title" => in_title = true,
        Event::End(_) if depth == 2 => in_title = false,
        _ if in_title => {
            if let Some(t) = text_of(event) {
                title.push_str(&t);
            }
        }
        _ => {}
    })?;
    let title = collapse_whitespace(&title);
    Ok((!title.is_empty()).then_some(title))
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a paragraph style makes of a paragraph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParagraphKind {
    Body,
    /// The document's title (style `Title`), treated as a level-1 heading.
    Title,
    /// A heading of level 1 to 9.
    Heading(u8),
}

#[derive(Debug, Default, Clone)]
struct Style {
    name: String,
    based_on: Option<String>,
    /// `w:outlineLvl`: 0 to 8 for heading levels 1 to 9, 9 for body text.
    outline: Option<u8>,
    numbering: Option<NumberingRef>,
}

/// A paragraph's `w:numPr`: which list (`numId`) and which level of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NumberingRef {
    id: String,
    level: u8,
}

/// Paragraph styles by id, and the id of the default paragraph style.
#[derive(Debug, Default)]
struct Styles {
    by_id: HashMap<String, Style>,
    default: Option<String>,
}

impl Styles {
    fn parse(xml: &str) -> Result<Self, ParseError> {
        let mut styles = Styles::default();
        // The style being read, and the depth of its `w:style` element.
        let mut current: Option<(usize, String, Style)> = None;
        let mut ppr_depth = None;
        let mut num_id: Option<String> = None;
        let mut num_level = 0u8;
        walk_xml(xml, "the styles", |event, depth, _| {
            let Some(name) = local_name(event) else { return };
            match event {
                Event::Start(e) | Event::Empty(e) => {
                    if name == "style" && current.is_none() {
                        if attr(e, "type").is_none_or(|t| t == "paragraph")
                            && let Some(id) = attr(e, "styleId")
                        {
                            if attr(e, "default").is_some_and(|d| d == "1" || d == "true") {
                                styles.default = Some(id.clone());
                            }
                            current = Some((depth, id, Style::default()));
                            ppr_depth = None;
                            num_id = None;
                            num_level = 0;
                        }
                        return;
                    }
                    let Some((style_depth, _, style)) = current.as_mut() else { return };
                    let rel = depth - *style_depth;
                    match (rel, name) {
                        (1, "name") => style.name = attr(e, "val").unwrap_or_default(),
                        (1, "basedOn") => style.based_on = attr(e, "val"),
                        (1, "pPr") => ppr_depth = Some(depth),
                        (2, "outlineLvl") if ppr_depth.is_some() => {
                            style.outline = attr(e, "val").and_then(|v| v.trim().parse().ok());
                        }
                        (3, "numId") if ppr_depth.is_some() => num_id = attr(e, "val"),
                        (3, "ilvl") if ppr_depth.is_some() => {
                            num_level = attr(e, "val").and_then(|v| v.trim().parse().ok()).unwrap_or(0);
                        }
                        _ => {}
                    }
                }
                Event::End(_) => {
                    if current.as_ref().is_some_and(|(d, _, _)| *d == depth) {
                        let (_, id, mut style) = current.take().expect("checked above");
                        if let Some(id) = num_id.take() {
                            style.numbering = Some(NumberingRef { id, level: num_level.min(8) });
                        }
                        styles.by_id.insert(id, style);
                    } else if ppr_depth == Some(depth) {
                        ppr_depth = None;
                    }
                }
                _ => {}
            }
        })?;
        Ok(styles)
    }

    /// The chain of styles from `id` through its `w:basedOn` ancestors.
    fn chain<'s>(&'s self, id: Option<&'s str>) -> impl Iterator<Item = &'s Style> + 's {
        let mut next = id.or(self.default.as_deref());
        std::iter::from_fn(move || {
            let style = self.by_id.get(next?)?;
            next = style.based_on.as_deref();
            Some(style)
        })
        .take(MAX_STYLE_CHAIN)
    }

    /// Whether a paragraph with style `id` and its own outline level
    /// `outline` is a heading, the title or body text. The paragraph's own
    /// outline level wins, then the nearest style in the chain that is named
    /// like a heading or has an outline level.
    fn kind(&self, id: Option<&str>, outline: Option<u8>) -> ParagraphKind {
        if let Some(level) = outline {
            return outline_kind(level);
        }
        for style in self.chain(id) {
            if let Some(kind) = kind_from_name(&style.name) {
                return kind;
            }
            if let Some(level) = style.outline {
                return outline_kind(level);
            }
        }
        // Without styles.xml a style id is all there is; Word's English ids
        // ("Heading1", "Title") are worth recognising then.
        if self.by_id.is_empty()
            && let Some(kind) = id.and_then(kind_from_name)
        {
            return kind;
        }
        ParagraphKind::Body
    }

    fn numbering<'a>(&'a self, id: Option<&'a str>) -> Option<&'a NumberingRef> {
        self.chain(id).find_map(|s| s.numbering.as_ref())
    }
}

fn outline_kind(level: u8) -> ParagraphKind {
    if level <= 8 { ParagraphKind::Heading(level + 1) } else { ParagraphKind::Body }
}

/// Recognises the built-in heading and title styles by name, in the forms
/// Word and WPS write: "heading 1", "Heading1", "标题 1", "标题1", "Title".
fn kind_from_name(name: &str) -> Option<ParagraphKind> {
    let name = name.trim().to_lowercase();
    if name == "title" || name == "标题" {
        return Some(ParagraphKind::Title);
    }
    let rest = name.strip_prefix("heading").or_else(|| name.strip_prefix("标题"))?;
    match rest.trim_start().parse::<u8>() {
        Ok(level @ 1..=9) => Some(ParagraphKind::Heading(level)),
        _ => None,
    }
}

/// One level of a list definition (`w:abstractNum/w:lvl`).
#[derive(Debug, Clone)]
struct Level {
    format: String,
    text: String,
    start: u32,
}

impl Default for Level {
    fn default() -> Self {
        Self { format: "decimal".into(), text: String::new(), start: 1 }
    }
}

/// A list instance (`w:num`): which definition it uses, and the levels
/// whose start it overrides.
#[derive(Debug, Default, Clone)]
struct NumberingInstance {
    abstract_id: String,
    start_overrides: Vec<(u8, u32)>,
}

/// `word/numbering.xml`, and the running counters of each list.
#[derive(Debug, Default)]
struct Numbering {
    abstracts: HashMap<String, Vec<Level>>,
    instances: HashMap<String, NumberingInstance>,
    /// Per list definition: the current number at each of its 9 levels
    /// (None: not started since the last higher-level item).
    counters: HashMap<String, [Option<u32>; 9]>,
    /// List instances already seen, so start overrides apply once.
    started: HashSet<String>,
}

impl Numbering {
    fn parse(xml: &str) -> Result<Self, ParseError> {
        let mut numbering = Numbering::default();
        let mut in_abstract: Option<(usize, String)> = None;
        let mut level: Option<(usize, u8, Level)> = None;
        let mut in_num: Option<(usize, String, NumberingInstance)> = None;
        let mut override_level: Option<(usize, u8)> = None;
        walk_xml(xml, "the list definitions", |event, depth, _| {
            let Some(name) = local_name(event) else { return };
            match event {
                Event::Start(e) | Event::Empty(e) => {
                    let val = || attr(e, "val").unwrap_or_default();
                    match name {
                        "abstractNum" if in_abstract.is_none() && in_num.is_none() => {
                            in_abstract = attr(e, "abstractNumId").map(|id| (depth, id));
                        }
                        "lvl" if in_abstract.is_some() && level.is_none() => {
                            let ilvl = attr(e, "ilvl").and_then(|v| v.trim().parse::<u8>().ok());
                            level = ilvl.filter(|l| *l <= 8).map(|l| (depth, l, Level::default()));
                        }
                        "start" if level.is_some() => {
                            if let Some((_, _, l)) = level.as_mut() {
                                l.start = val().trim().parse().unwrap_or(1);
                            }
                        }
                        "numFmt" if level.is_some() => {
                            if let Some((_, _, l)) = level.as_mut() {
                                l.format = val();
                            }
                        }
                        "lvlText" if level.is_some() => {
                            if let Some((_, _, l)) = level.as_mut() {
                                l.text = val().chars().take(MAX_LEVEL_TEXT).collect();
                            }
                        }
                        "num" if in_abstract.is_none() && in_num.is_none() => {
                            in_num = attr(e, "numId").map(|id| (depth, id, NumberingInstance::default()));
                        }
                        "abstractNumId" => {
                            if let Some((_, _, n)) = in_num.as_mut() {
                                n.abstract_id = val();
                            }
                        }
                        "lvlOverride" if in_num.is_some() => {
                            override_level = attr(e, "ilvl")
                                .and_then(|v| v.trim().parse::<u8>().ok())
                                .filter(|l| *l <= 8)
                                .map(|l| (depth, l));
                        }
                        "startOverride" => {
                            if let (Some((_, _, n)), Some((_, l))) = (in_num.as_mut(), override_level) {
                                n.start_overrides.push((l, val().trim().parse().unwrap_or(1)));
                            }
                        }
                        _ => {}
                    }
                    // An empty element ends where it starts.
                    if matches!(event, Event::Empty(_)) {
                        close(depth, &mut numbering, &mut in_abstract, &mut level, &mut in_num, &mut override_level);
                    }
                }
                Event::End(_) => {
                    close(depth, &mut numbering, &mut in_abstract, &mut level, &mut in_num, &mut override_level)
                }
                _ => {}
            }
        })?;
        fn close(
            depth: usize,
            numbering: &mut Numbering,
            in_abstract: &mut Option<(usize, String)>,
            level: &mut Option<(usize, u8, Level)>,
            in_num: &mut Option<(usize, String, NumberingInstance)>,
            override_level: &mut Option<(usize, u8)>,
        ) {
            if level.as_ref().is_some_and(|(d, _, _)| *d == depth) {
                let (_, ilvl, l) = level.take().expect("checked above");
                if let Some((_, id)) = in_abstract.as_ref() {
                    let levels = numbering.abstracts.entry(id.clone()).or_insert_with(|| vec![Level::default(); 9]);
                    levels[usize::from(ilvl)] = l;
                }
            } else if in_abstract.as_ref().is_some_and(|(d, _)| *d == depth) {
                let (_, id) = in_abstract.take().expect("checked above");
                numbering.abstracts.entry(id).or_insert_with(|| vec![Level::default(); 9]);
            } else if override_level.is_some_and(|(d, _)| d == depth) {
                *override_level = None;
            } else if in_num.as_ref().is_some_and(|(d, _, _)| *d == depth) {
                let (_, id, n) = in_num.take().expect("checked above");
                numbering.instances.insert(id, n);
            }
        }
        Ok(numbering)
    }

    /// Advances the counters of list `r` and returns the item's prefix:
    /// "- " for bullets, the rendered number ("1. ", "1.2 ", "一、") for
    /// numbered lists, and "- " when the list is not defined.
    fn next(&mut self, r: &NumberingRef) -> String {
        let Some(instance) = self.instances.get(&r.id) else {
            return "- ".into();
        };
        let Some(levels) = self.abstracts.get(&instance.abstract_id) else {
            return "- ".into();
        };
        let counters = self.counters.entry(instance.abstract_id.clone()).or_insert([None; 9]);
        // Only ids defined in numbering.xml get here, so the set stays small.
        if self.started.insert(r.id.clone()) {
            // A list instance that overrides a start begins that level
            // again (Word's "restart numbering").
            for &(l, start) in &instance.start_overrides {
                counters[usize::from(l)] = Some(start.saturating_sub(1));
            }
        }
        let level = usize::from(r.level);
        counters[level] = Some(match counters[level] {
            Some(n) => n.saturating_add(1),
            None => levels[level].start,
        });
        for deeper in &mut counters[level + 1..] {
            *deeper = None;
        }
        let this = &levels[level];
        match this.format.as_str() {
            "bullet" => return "- ".into(),
            "none" if !this.text.contains('%') => {
                return if this.text.trim().is_empty() { String::new() } else { format!("{} ", this.text.trim()) };
            }
            _ => {}
        }
        // "%1.%2." → the numbers of levels 1 and 2, each in its own format.
        let mut out = String::new();
        let mut chars = this.text.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek().and_then(|d| d.to_digit(10))) {
                ('%', Some(d @ 1..=9)) => {
                    chars.next();
                    let l = (d - 1) as usize;
                    let n = counters[l].unwrap_or(levels[l].start);
                    out.push_str(&format_number(n, &levels[l].format));
                }
                (c, _) => out.push(c),
            }
        }
        let out = out.trim();
        if out.is_empty() { String::new() } else { format!("{out} ") }
    }
}

/// Renders list number `n` in a `w:numFmt`; formats not known here fall
/// back to decimal digits.
fn format_number(n: u32, format: &str) -> String {
    match format {
        "decimalZero" => format!("{n:02}"),
        "upperRoman" => roman(n).to_uppercase(),
        "lowerRoman" => roman(n),
        "upperLetter" => letters(n).to_uppercase(),
        "lowerLetter" => letters(n),
        "chineseCounting"
        | "chineseCountingThousand"
        | "japaneseCounting"
        | "taiwaneseCounting"
        | "ideographLegalTraditional" => chinese(n).unwrap_or_else(|| n.to_string()),
        "ideographDigital" | "taiwaneseDigital" => n
            .to_string()
            .chars()
            .map(|d| "〇一二三四五六七八九".chars().nth(d as usize - '0' as usize).unwrap_or(d))
            .collect(),
        "chineseLegalSimplified" => chinese(n)
            .map(|s| s.chars().map(|c| legal_digit(c).unwrap_or(c)).collect())
            .unwrap_or_else(|| n.to_string()),
        "ideographTraditional" => {
            "甲乙丙丁戊己庚辛壬癸".chars().nth(n.wrapping_sub(1) as usize).map_or_else(|| n.to_string(), String::from)
        }
        "decimalEnclosedCircle" | "decimalEnclosedCircleChinese" if (1..=20).contains(&n) => {
            char::from_u32(0x2460 + n - 1).map_or_else(|| n.to_string(), String::from)
        }
        "decimalFullWidth" | "decimalFullWidth2" => {
            n.to_string().chars().map(|d| char::from_u32(d as u32 - '0' as u32 + 0xFF10).unwrap_or(d)).collect()
        }
        _ => n.to_string(),
    }
}

fn roman(mut n: u32) -> String {
    if n == 0 || n >= 4000 {
        return n.to_string();
    }
    const TABLE: [(u32, &str); 13] = [
        (1000, "m"),
        (900, "cm"),
        (500, "d"),
        (400, "cd"),
        (100, "c"),
        (90, "xc"),
        (50, "l"),
        (40, "xl"),
        (10, "x"),
        (9, "ix"),
        (5, "v"),
        (4, "iv"),
        (1, "i"),
    ];
    let mut out = String::new();
    for (value, digits) in TABLE {
        while n >= value {
            out.push_str(digits);
            n -= value;
        }
    }
    out
}

/// Word's letter numbering: a…z, then aa…zz, aaa…, repeating one letter.
fn letters(n: u32) -> String {
    if n == 0 {
        return "0".into();
    }
    let letter = char::from(b'a' + ((n - 1) % 26) as u8);
    let times = ((n - 1) / 26 + 1).min(10) as usize;
    std::iter::repeat_n(letter, times).collect()
}

/// Chinese counting numerals (一, 十二, 一百零五, 三千二百) below 10,000.
fn chinese(n: u32) -> Option<String> {
    const DIGITS: [char; 10] = ['〇', '一', '二', '三', '四', '五', '六', '七', '八', '九'];
    if n == 0 {
        return Some("〇".into());
    }
    if n >= 10_000 {
        return None;
    }
    let parts = [(n / 1000, '千'), (n / 100 % 10, '百'), (n / 10 % 10, '十'), (n % 10, ' ')];
    let mut out = String::new();
    let mut pending_zero = false;
    for (digit, unit) in parts {
        if digit == 0 {
            pending_zero = !out.is_empty();
            continue;
        }
        if pending_zero {
            out.push('〇');
            pending_zero = false;
        }
        // "十二", not "一十二", when the tens lead.
        if !(unit == '十' && digit == 1 && out.is_empty()) {
            out.push(DIGITS[digit as usize]);
        }
        if unit != ' ' {
            out.push(unit);
        }
    }
    Some(out.replace('〇', "零"))
}

fn legal_digit(c: char) -> Option<char> {
    let plain = "零一二三四五六七八九十百千";
    let legal = "零壹贰叁肆伍陆柒捌玖拾佰仟";
    plain.chars().position(|p| p == c).and_then(|i| legal.chars().nth(i))
}

/// A paragraph being read.
#[derive(Debug, Default)]
struct Paragraph {
    style: Option<String>,
    outline: Option<u8>,
    numbering: Option<NumberingRef>,
    /// The paragraph removes the numbering its style would give it.
    numbering_off: bool,
    text: String,
    /// Text of text boxes anchored in this paragraph, each a paragraph of
    /// its own after this one.
    boxes: Vec<String>,
}

/// What the document walker has open, each with the depth of its element.
#[derive(Debug)]
enum Frame {
    Paragraph(usize, Paragraph),
    Table(usize, Vec<String>),
    Row(usize, Vec<Vec<String>>),
    Cell(usize, Vec<String>),
    TextBox(usize, Vec<String>),
}

impl Frame {
    fn depth(&self) -> usize {
        match self {
            Frame::Paragraph(d, _)
            | Frame::Table(d, _)
            | Frame::Row(d, _)
            | Frame::Cell(d, _)
            | Frame::TextBox(d, _) => *d,
        }
    }
}

/// A paragraph of the body: the unit the outline is built from.
#[derive(Debug)]
enum Block {
    Heading { title: bool, level: u8, text: String },
    Text { text: String, list: bool },
}

/// Turns the events of the main document part into body blocks.
struct DocumentWalker<'s> {
    styles: &'s Styles,
    numbering: Numbering,
    frames: Vec<Frame>,
    blocks: Vec<Block>,
    /// Depth of the element whose content is being skipped.
    skip: Option<usize>,
    /// Open `mc:AlternateContent` elements: depth, and whether one of its
    /// branches has been taken.
    alternates: Vec<(usize, bool)>,
    /// Depth of the open `w:pPr` of the innermost paragraph.
    ppr: Option<usize>,
    /// Depth of the open `w:numPr` in it.
    num_pr: Option<usize>,
    /// Inside a `w:t` (or math `m:t`): its text is the document's text.
    in_text: bool,
}

impl<'s> DocumentWalker<'s> {
    fn new(styles: &'s Styles, numbering: Numbering) -> Self {
        Self {
            styles,
            numbering,
            frames: Vec::new(),
            blocks: Vec::new(),
            skip: None,
            alternates: Vec::new(),
            ppr: None,
            num_pr: None,
            in_text: false,
        }
    }

    fn event(&mut self, event: &Event<'_>, depth: usize) {
        match event {
            Event::Start(e) => self.start(e, depth),
            Event::Empty(e) => {
                self.start(e, depth);
                self.end(e.local_name().into_inner(), depth);
            }
            Event::End(e) => self.end(e.local_name().into_inner(), depth),
            _ => {
                if self.in_text
                    && self.skip.is_none()
                    && let Some(text) = text_of(event)
                {
                    self.push_text(&text);
                }
            }
        }
    }

    fn paragraph(&mut self) -> Option<&mut Paragraph> {
        match self.frames.last_mut() {
            Some(Frame::Paragraph(_, p)) => Some(p),
            _ => None,
        }
    }

    fn push_text(&mut self, text: &str) {
        if let Some(p) = self.paragraph() {
            // XML forbids NUL, but a damaged part may hold one, and
            // PostgreSQL refuses it in TEXT.
            p.text.extend(text.chars().filter(|&c| c != '\0'));
        }
    }

    fn start(&mut self, e: &BytesStart<'_>, depth: usize) {
        if self.skip.is_some() {
            return;
        }
        let name = e.local_name().into_inner();
        if let Some(ppr) = self.ppr {
            self.paragraph_property(e, name, depth - ppr);
            return;
        }
        match name {
            "p" => self.frames.push(Frame::Paragraph(depth, Paragraph::default())),
            "pPr" if matches!(self.frames.last(), Some(Frame::Paragraph(d, _)) if *d + 1 == depth) => {
                self.ppr = Some(depth);
            }
            "t" => self.in_text = true,
            "tab" | "ptab" => self.push_text("\t"),
            "br" | "cr" => self.push_text("\n"),
            "noBreakHyphen" => self.push_text("-"),
            "tbl" => self.frames.push(Frame::Table(depth, Vec::new())),
            "tr" => self.frames.push(Frame::Row(depth, Vec::new())),
            "tc" => self.frames.push(Frame::Cell(depth, Vec::new())),
            "txbxContent" => self.frames.push(Frame::TextBox(depth, Vec::new())),
            // Deleted text, field codes (the visible result of a field
            // follows them) and content-control placeholders are not text of
            // the document; nor is the record of earlier formatting.
            "del" | "moveFrom" | "delText" | "instrText" | "delInstrText" | "rPrChange" | "pPrChange" | "sdtPr" => {
                self.skip = Some(depth);
            }
            // Word stores a text box twice, as DrawingML (mc:Choice) and as
            // VML (mc:Fallback): read the first branch only.
            "AlternateContent" => self.alternates.push((depth, false)),
            "Choice" | "Fallback" => match self.alternates.last_mut() {
                Some((d, taken)) if *d + 1 == depth => {
                    if *taken {
                        self.skip = Some(depth);
                    } else {
                        *taken = true;
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Reads the properties of a paragraph that matter here; `rel` is the
    /// depth below its `w:pPr`.
    fn paragraph_property(&mut self, e: &BytesStart<'_>, name: &str, rel: usize) {
        let num_pr = self.num_pr;
        let Some(p) = self.paragraph() else { return };
        match (rel, name) {
            (1, "pStyle") => p.style = attr(e, "val"),
            (1, "outlineLvl") => p.outline = attr(e, "val").and_then(|v| v.trim().parse().ok()),
            (1, "numPr") => self.num_pr = Some(rel),
            (2, "numId") if num_pr.is_some() => match attr(e, "val") {
                // numId 0 means "no list", overriding the style's list.
                Some(id) if id.trim() == "0" => p.numbering_off = true,
                Some(id) => {
                    let level = p.numbering.as_ref().map_or(0, |n| n.level);
                    p.numbering = Some(NumberingRef { id: id.trim().to_owned(), level });
                }
                None => {}
            },
            (2, "ilvl") if num_pr.is_some() => {
                let level = attr(e, "val").and_then(|v| v.trim().parse::<u8>().ok()).unwrap_or(0).min(8);
                match p.numbering.as_mut() {
                    Some(n) => n.level = level,
                    None => p.numbering = Some(NumberingRef { id: String::new(), level }),
                }
            }
            _ => {}
        }
    }

    fn end(&mut self, name: &str, depth: usize) {
        if let Some(skip) = self.skip {
            if skip == depth {
                self.skip = None;
            }
            return;
        }
        if let Some(ppr) = self.ppr {
            if depth == ppr {
                self.ppr = None;
                self.num_pr = None;
            } else if self.num_pr.is_some_and(|rel| ppr + rel == depth) {
                self.num_pr = None;
            }
            return;
        }
        match name {
            "t" => self.in_text = false,
            "AlternateContent" if self.alternates.last().is_some_and(|(d, _)| *d == depth) => {
                self.alternates.pop();
            }
            _ => {}
        }
        if self.frames.last().is_some_and(|f| f.depth() == depth) {
            let frame = self.frames.pop().expect("checked above");
            self.close(frame);
        }
    }

    fn close(&mut self, frame: Frame) {
        match frame {
            Frame::Paragraph(_, p) => self.close_paragraph(p),
            Frame::Table(_, rows) => {
                let text = rows.join("\n");
                self.sink_text(text, false);
            }
            Frame::Row(_, cells) => {
                // A one-cell row is a box around text (common for code and
                // notes): keep its lines. Otherwise the row is one line.
                let line = if cells.len() == 1 {
                    cells[0].join("\n")
                } else {
                    cells.iter().map(|c| c.join(" ")).collect::<Vec<_>>().join(" | ")
                };
                if let Some(Frame::Table(_, rows)) = self.frames.last_mut()
                    && !line.trim().is_empty()
                {
                    rows.push(line);
                }
            }
            Frame::Cell(_, paragraphs) => {
                if let Some(Frame::Row(_, cells)) = self.frames.last_mut() {
                    cells.push(paragraphs);
                }
            }
            Frame::TextBox(_, paragraphs) => {
                let anchor = self.frames.iter_mut().rev().find_map(|f| match f {
                    Frame::Paragraph(_, p) => Some(p),
                    _ => None,
                });
                match anchor {
                    Some(p) => p.boxes.extend(paragraphs),
                    None => {
                        for text in paragraphs {
                            self.sink_text(text, false);
                        }
                    }
                }
            }
        }
    }

    fn close_paragraph(&mut self, p: Paragraph) {
        let in_body = !self.frames.iter().any(|f| matches!(f, Frame::Cell(..) | Frame::TextBox(..)));
        let kind = if in_body { self.styles.kind(p.style.as_deref(), p.outline) } else { ParagraphKind::Body };
        let numbering = if p.numbering_off {
            None
        } else {
            match p.numbering {
                Some(n) if !n.id.is_empty() => Some(n),
                // A level without a list id takes the list of the style.
                Some(n) => self.styles.numbering(p.style.as_deref()).map(|s| NumberingRef { id: s.id.clone(), ..n }),
                None => self.styles.numbering(p.style.as_deref()).cloned(),
            }
        };
        // Word counts empty list paragraphs too, so the counter advances
        // whether or not this one has text.
        let prefix = numbering.as_ref().map(|n| self.numbering.next(n));
        let text = p.text.trim();
        if !text.is_empty() {
            match kind {
                ParagraphKind::Title | ParagraphKind::Heading(_) if in_body => {
                    let level = match kind {
                        ParagraphKind::Heading(l) => l,
                        _ => 1,
                    };
                    // A heading keeps its number ("1.2 背景") but not a bullet.
                    let prefix = prefix.filter(|p| p != "- ").unwrap_or_default();
                    self.blocks.push(Block::Heading {
                        title: kind == ParagraphKind::Title,
                        level,
                        text: collapse_whitespace(&format!("{prefix}{text}")),
                    });
                }
                _ => {
                    let list = prefix.is_some();
                    let indent = numbering.as_ref().map_or(0, |n| usize::from(n.level) * 2);
                    let text = format!("{:indent$}{}{text}", "", prefix.unwrap_or_default());
                    self.sink_text(text, list);
                }
            }
        }
        for text in p.boxes {
            self.sink_text(text, false);
        }
    }

    /// Hands finished text to the innermost cell or text box, or to the body.
    fn sink_text(&mut self, text: String, list: bool) {
        if text.trim().is_empty() {
            return;
        }
        for frame in self.frames.iter_mut().rev() {
            match frame {
                Frame::Cell(_, paragraphs) | Frame::TextBox(_, paragraphs) => {
                    paragraphs.push(text);
                    return;
                }
                _ => {}
            }
        }
        self.blocks.push(Block::Text { text, list });
    }

    fn finish(mut self, core_title: Option<String>) -> ParsedDocument {
        // An unclosed element at the end of a damaged part: keep what it had.
        while let Some(frame) = self.frames.pop() {
            self.close(frame);
        }
        let mut outline = Outline::new();
        let mut style_title = None;
        for block in self.blocks {
            match block {
                Block::Heading { title, level, text } => {
                    if title && style_title.is_none() && text.chars().count() <= MAX_HEADING_CHARS {
                        style_title = Some(text.clone());
                    }
                    outline.heading(level, &text);
                }
                Block::Text { text, list } => outline.paragraph(&text, list),
            }
        }
        let (sections, first_h1) = outline.finish();
        ParsedDocument { title: style_title.or(core_title).or(first_h1), sections }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use zip::write::SimpleFileOptions;
    use zip::{CompressionMethod, ZipWriter};

    use super::*;

    const W: &str = r#"xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" xmlns:wps="http://schemas.microsoft.com/office/word/2010/wordprocessingShape" xmlns:v="urn:schemas-microsoft-com:vml""#;

    fn options() -> SimpleFileOptions {
        SimpleFileOptions::default().compression_method(CompressionMethod::Deflated)
    }

    /// A docx package with the given parts, written with the zip writer.
    fn package(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        for (name, text) in parts {
            zip.start_file(*name, options()).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    fn document(body: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document {W}><w:body>{body}</w:body></w:document>"#
        )
    }

    fn styles() -> String {
        // Localised ids, as Chinese Word writes them: the names say what
        // the styles are. "a5" is a custom style based on a heading style
        // known only by its outline level.
        format!(
            r#"<w:styles {W}>
              <w:style w:type="paragraph" w:default="1" w:styleId="a"><w:name w:val="Normal"/></w:style>
              <w:style w:type="paragraph" w:styleId="1"><w:name w:val="heading 1"/><w:basedOn w:val="a"/><w:pPr><w:outlineLvl w:val="0"/></w:pPr></w:style>
              <w:style w:type="paragraph" w:styleId="2"><w:name w:val="Heading 2"/><w:basedOn w:val="a"/></w:style>
              <w:style w:type="paragraph" w:styleId="a3"><w:name w:val="Title"/><w:basedOn w:val="a"/></w:style>
              <w:style w:type="paragraph" w:styleId="biaoti1"><w:name w:val="标题 1"/></w:style>
              <w:style w:type="paragraph" w:styleId="berschrift3"><w:name w:val="Überschrift 3"/><w:pPr><w:outlineLvl w:val="2"/></w:pPr></w:style>
              <w:style w:type="paragraph" w:styleId="a5"><w:name w:val="My Sub Heading"/><w:basedOn w:val="berschrift3"/></w:style>
              <w:style w:type="paragraph" w:styleId="ListBullet"><w:name w:val="List Bullet"/><w:pPr><w:numPr><w:numId w:val="1"/></w:numPr></w:pPr></w:style>
              <w:style w:type="character" w:styleId="1Char"><w:name w:val="heading 1 Char"/></w:style>
            </w:styles>"#
        )
    }

    fn numbering() -> String {
        format!(
            r#"<w:numbering {W}>
              <w:abstractNum w:abstractNumId="0"><w:lvl w:ilvl="0"><w:start w:val="1"/><w:numFmt w:val="bullet"/><w:lvlText w:val=""/></w:lvl></w:abstractNum>
              <w:abstractNum w:abstractNumId="1">
                <w:lvl w:ilvl="0"><w:start w:val="1"/><w:numFmt w:val="decimal"/><w:lvlText w:val="%1."/></w:lvl>
                <w:lvl w:ilvl="1"><w:start w:val="1"/><w:numFmt w:val="lowerLetter"/><w:lvlText w:val="%1.%2)"/></w:lvl>
              </w:abstractNum>
              <w:abstractNum w:abstractNumId="2"><w:lvl w:ilvl="0"><w:start w:val="1"/><w:numFmt w:val="chineseCounting"/><w:lvlText w:val="%1、"/></w:lvl></w:abstractNum>
              <w:num w:numId="1"><w:abstractNumId w:val="0"/></w:num>
              <w:num w:numId="2"><w:abstractNumId w:val="1"/></w:num>
              <w:num w:numId="3"><w:abstractNumId w:val="2"/></w:num>
            </w:numbering>"#
        )
    }

    fn para(style: &str, text: &str) -> String {
        let ppr =
            if style.is_empty() { String::new() } else { format!(r#"<w:pPr><w:pStyle w:val="{style}"/></w:pPr>"#) };
        format!(r#"<w:p>{ppr}<w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>"#)
    }

    fn list_item(num_id: u32, level: u8, text: &str) -> String {
        format!(
            r#"<w:p><w:pPr><w:numPr><w:ilvl w:val="{level}"/><w:numId w:val="{num_id}"/></w:numPr></w:pPr><w:r><w:t>{text}</w:t></w:r></w:p>"#
        )
    }

    fn parse_ok(bytes: &[u8]) -> ParsedDocument {
        parse(bytes, &mut |_| {}).unwrap_or_else(|e| panic!("parse failed: {e:?}"))
    }

    fn all_text(doc: &ParsedDocument) -> String {
        doc.sections.iter().map(|s| s.text.as_str()).collect::<Vec<_>>().join("\n\n")
    }

    fn paths(doc: &ParsedDocument) -> Vec<String> {
        doc.sections.iter().map(|s| s.headings.join(" > ")).collect()
    }

    fn error_of(bytes: &[u8]) -> (ParseError, Duration) {
        let started = Instant::now();
        let result = parse(bytes, &mut |_| {});
        (result.expect_err("the file must be refused"), started.elapsed())
    }

    #[test]
    fn headings_from_styles_names_and_outline_levels_build_the_paths() {
        let body = [
            para("a3", "The Report"),
            para("", "by the authors"),
            para("1", "第一章 总则"),
            para("", "first chapter text"),
            para("2", "1.1 Background"),
            para("", "background text"),
            para("a5", "1.1.1 Detail"),
            para("", "detail text"),
            // An outline level on the paragraph itself makes a level-2 heading.
            r#"<w:p><w:pPr><w:outlineLvl w:val="1"/></w:pPr><w:r><w:t>1.2 Outline</w:t></w:r></w:p>"#.to_owned(),
            para("", "outline text"),
            para("biaoti1", "第二章 标题样式"),
            para("", "second chapter text"),
            // Outline level 9 is body text, even in a heading style.
            r#"<w:p><w:pPr><w:pStyle w:val="1"/><w:outlineLvl w:val="9"/></w:pPr><w:r><w:t>not a heading</w:t></w:r></w:p>"#
                .to_owned(),
        ]
        .concat();
        let bytes = package(&[("word/document.xml", &document(&body)), ("word/styles.xml", &styles())]);
        let doc = parse_ok(&bytes);
        assert_eq!(doc.title.as_deref(), Some("The Report"), "the Title style gives the title");
        assert_eq!(
            paths(&doc),
            [
                "The Report",
                "第一章 总则",
                "第一章 总则 > 1.1 Background",
                "第一章 总则 > 1.1 Background > 1.1.1 Detail",
                "第一章 总则 > 1.2 Outline",
                "第二章 标题样式",
            ]
        );
        // A section's text starts with its heading, as in Markdown.
        assert_eq!(doc.sections[0].text, "The Report\n\nby the authors");
        assert_eq!(doc.sections[1].text, "第一章 总则\n\nfirst chapter text");
        assert_eq!(doc.sections[5].text, "第二章 标题样式\n\nsecond chapter text\n\nnot a heading");
    }

    #[test]
    fn title_falls_back_to_core_properties_then_the_first_heading() {
        let core = r#"<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>年度 报告</dc:title></cp:coreProperties>"#;
        let rels = r#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/><Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/relationships/metadata/core-properties" Target="docProps/core.xml"/></Relationships>"#;
        let body = [para("1", "Chapter"), para("", "text")].concat();
        let doc = parse_ok(&package(&[
            ("_rels/.rels", rels),
            ("docProps/core.xml", core),
            ("word/document.xml", &document(&body)),
            ("word/styles.xml", &styles()),
        ]));
        assert_eq!(doc.title.as_deref(), Some("年度 报告"));
        let doc = parse_ok(&package(&[("word/document.xml", &document(&body)), ("word/styles.xml", &styles())]));
        assert_eq!(doc.title.as_deref(), Some("Chapter"));
    }

    #[test]
    fn lists_get_bullets_and_numbers() {
        let body = [
            para("", "Fruit:"),
            list_item(1, 0, "Apple"),
            list_item(1, 0, "Banana"),
            para("", "Steps:"),
            list_item(2, 0, "Open"),
            list_item(2, 1, "carefully"),
            list_item(2, 1, "slowly"),
            list_item(2, 0, "Close"),
            list_item(2, 1, "again"),
            list_item(3, 0, "总则"),
            list_item(3, 0, "分则"),
            para("ListBullet", "styled bullet"),
        ]
        .concat();
        let bytes = package(&[
            ("word/document.xml", &document(&body)),
            ("word/styles.xml", &styles()),
            ("word/numbering.xml", &numbering()),
        ]);
        let text = all_text(&parse_ok(&bytes));
        assert_eq!(
            text,
            "Fruit:\n\n- Apple\n- Banana\n\nSteps:\n\n1. Open\n  1.a) carefully\n  1.b) slowly\n2. Close\n  2.a) again\n\
             一、 总则\n二、 分则\n- styled bullet"
        );
    }

    #[test]
    fn tables_are_rows_of_cells_in_order() {
        let cell = |t: &str| format!("<w:tc><w:tcPr/>{}</w:tc>", para("", t));
        let inner = format!("<w:tbl><w:tr>{}{}</w:tr></w:tbl>", cell("in1"), cell("in2"));
        let body = format!(
            "{}<w:tbl><w:tblPr/><w:tr>{}{}</w:tr><w:tr>{}<w:tc>{}{}</w:tc></w:tr></w:tbl>{}",
            para("", "Above"),
            cell("Top left"),
            cell("Top right"),
            cell("Bottom left"),
            para("", "Bottom right"),
            inner,
            para("", "Below"),
        );
        let text = all_text(&parse_ok(&package(&[("word/document.xml", &document(&body))])));
        assert_eq!(text, "Above\n\nTop left | Top right\nBottom left | Bottom right in1 | in2\n\nBelow");
    }

    #[test]
    fn text_boxes_appear_once_and_hyperlinks_fields_and_insertions_are_text() {
        let text_box = |t: &str| format!("<w:txbxContent>{}</w:txbxContent>", para("", t));
        let body = format!(
            r#"<w:p><w:r><w:t>Anchor </w:t></w:r><w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><wps:wsp><wps:txbx>{}</wps:txbx></wps:wsp></w:drawing></mc:Choice><mc:Fallback><w:pict><v:shape><v:textbox>{}</v:textbox></v:shape></w:pict></mc:Fallback></mc:AlternateContent></w:r></w:p>
            <w:p><w:r><w:t xml:space="preserve">See </w:t></w:r><w:hyperlink r:id="rId5" xmlns:r="r"><w:r><w:t>the site</w:t></w:r></w:hyperlink><w:r><w:t>.</w:t></w:r></w:p>
            <w:p><w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText> PAGE </w:instrText></w:r><w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>7</w:t></w:r><w:r><w:fldChar w:fldCharType="end"/></w:r><w:del><w:r><w:delText>gone</w:delText></w:r></w:del><w:ins><w:r><w:t>new</w:t></w:r></w:ins></w:p>
            <w:p><w:r><w:t>a</w:t><w:tab/><w:t>b</w:t><w:br/><w:t>c</w:t><w:noBreakHyphen/><w:t>d &amp; &#x41;&lt;</w:t></w:r></w:p>
            <w:sdt><w:sdtPr><w:alias w:val="x"/></w:sdtPr><w:sdtContent><w:p><w:r><w:t>in a control</w:t></w:r></w:p></w:sdtContent></w:sdt>"#,
            text_box("Datum plane"),
            text_box("Datum plane"),
        );
        let text = all_text(&parse_ok(&package(&[("word/document.xml", &document(&body))])));
        assert_eq!(text.matches("Datum plane").count(), 1, "{text}");
        assert_eq!(text, "Anchor\n\nDatum plane\n\nSee the site.\n\n7new\n\na\tb\nc-d & A<\n\nin a control");
    }

    #[test]
    fn number_formats() {
        assert_eq!(chinese(1).unwrap(), "一");
        assert_eq!(chinese(10).unwrap(), "十");
        assert_eq!(chinese(12).unwrap(), "十二");
        assert_eq!(chinese(20).unwrap(), "二十");
        assert_eq!(chinese(105).unwrap(), "一百零五");
        assert_eq!(chinese(3200).unwrap(), "三千二百");
        assert_eq!(format_number(14, "upperRoman"), "XIV");
        assert_eq!(format_number(28, "lowerLetter"), "bb");
        assert_eq!(format_number(3, "chineseLegalSimplified"), "叁");
        assert_eq!(format_number(2, "decimalEnclosedCircle"), "②");
        assert_eq!(format_number(7, "somethingNew"), "7");
    }

    #[test]
    fn damaged_and_foreign_files_are_corrupt() {
        let good = package(&[("word/document.xml", &document(&para("", "hello")))]);
        for (what, bytes) in [
            ("truncated zip", good[..good.len() / 2].to_vec()),
            ("garbage", b"PK\x03\x04 this is not really a zip file at all".to_vec()),
            ("no document part", package(&[("word/other.xml", "<x/>")])),
            ("broken xml", package(&[("word/document.xml", "<w:document><w:body><w:p></w:body>")])),
        ] {
            let (error, took) = error_of(&bytes);
            assert_eq!(error.kind, ParseErrorKind::Corrupt, "{what}: {error:?}");
            assert!(error.message.contains("damaged"), "{what}: {}", error.message);
            assert!(took < Duration::from_secs(60), "{what} took {took:?}");
        }
        assert_eq!(error_of(b"").0.kind, ParseErrorKind::Empty);
        let mut ole = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1".to_vec();
        ole.extend("EncryptedPackage".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(error_of(&ole).0.kind, ParseErrorKind::Encrypted);
    }

    /// A raw deflate stream of `1 + 258 * repeats` zero bytes: one literal
    /// zero, then back-references of the longest length (258) at distance 1,
    /// in one block with the fixed Huffman codes. That is how zip bombs are
    /// made (13 bits per 258 bytes), and it costs the test nothing, where
    /// running 200 MiB through a real compressor takes seconds in a debug
    /// build.
    fn deflated_zeros(repeats: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(repeats * 13 / 8 + 16);
        let (mut acc, mut bits) = (0u64, 0u32);
        // Deflate packs fields from the least significant bit; Huffman
        // codes go most significant bit first, so they are reversed.
        let mut put = |value: u32, count: u32, huffman: bool| {
            let value = if huffman { value.reverse_bits() >> (32 - count) } else { value };
            acc |= u64::from(value) << bits;
            bits += count;
            while bits >= 8 {
                out.push(acc as u8);
                acc >>= 8;
                bits -= 8;
            }
        };
        put(1, 1, false); // BFINAL
        put(1, 2, false); // BTYPE 01: fixed Huffman codes
        put(0x30, 8, true); // literal 0
        for _ in 0..repeats {
            put(0xC5, 8, true); // length symbol 285: 258 bytes
            put(0, 5, true); // distance code 0: distance 1
        }
        put(0, 7, true); // end of block (symbol 256)
        put(0, 7, false); // pad to a byte boundary
        out
    }

    /// A zip archive holding `name` with raw deflate `data`, declaring the
    /// uncompressed size `declared` (a bomb lies about it as it likes).
    fn zip_with_raw_entry(name: &str, data: &[u8], declared: u32) -> Vec<u8> {
        let mut zip = Vec::new();
        let header = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend(20u16.to_le_bytes()); // version made by
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend(0u16.to_le_bytes()); // flags
            h.extend(8u16.to_le_bytes()); // method: deflate
            h.extend([0, 0, 0x21, 0]); // time, date (1980-01-01)
            h.extend(0u32.to_le_bytes()); // CRC-32: never reached, the read stops first
            h.extend((data.len() as u32).to_le_bytes());
            h.extend(declared.to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra field length
            if central {
                h.extend([0; 10]); // comment length, disk, internal and external attributes
                h.extend(0u32.to_le_bytes()); // offset of the local header
            }
            h.extend(name.as_bytes());
            h
        };
        zip.extend(header(0x0403_4b50, false));
        zip.extend(data);
        let central_start = zip.len() as u32;
        zip.extend(header(0x0201_4b50, true));
        let central_len = zip.len() as u32 - central_start;
        zip.extend(0x0605_4b50u32.to_le_bytes());
        zip.extend([0, 0, 0, 0, 1, 0, 1, 0]); // disk numbers, one entry
        zip.extend(central_len.to_le_bytes());
        zip.extend(central_start.to_le_bytes());
        zip.extend(0u16.to_le_bytes()); // comment length
        zip
    }

    #[test]
    fn a_zip_bomb_stops_at_the_cap() {
        // The generator is right: a small stream unpacks to exactly its zeros.
        let small = zip_with_raw_entry("word/document.xml", &deflated_zeros(4), 1 + 258 * 4);
        let mut archive = ZipArchive::new(Cursor::new(&small[..])).unwrap();
        let mut unpacked = Vec::new();
        let entry = archive.by_name("word/document.xml").unwrap();
        entry.take(1 << 20).read_to_end(&mut unpacked).unwrap_err(); // the CRC is left out on purpose
        assert_eq!(unpacked, vec![0u8; 1 + 258 * 4]);

        // 200 MiB of zeros in 1.3 MB, declaring its size honestly and lying
        // (1 KiB): the reader stops at the 64 MiB cap, or at the declared
        // size and then fails the missing checksum.
        let repeats = (200 << 20) / 258;
        let zeros = deflated_zeros(repeats);
        assert!(zeros.len() < 2 << 20, "the bomb itself is small: {}", zeros.len());
        let honest = 1 + 258 * repeats as u32;
        for (declared, kind) in [(honest, ParseErrorKind::TooLarge), (1024, ParseErrorKind::Corrupt)] {
            let bytes = zip_with_raw_entry("word/document.xml", &zeros, declared);
            let (error, took) = error_of(&bytes);
            assert_eq!(error.kind, kind, "declared {declared}: {error:?}");
            assert!(took < Duration::from_secs(60), "declared {declared}: took {took:?}");
        }
    }

    #[test]
    fn too_many_entries_are_refused() {
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        for i in 0..=MAX_ENTRIES {
            zip.start_file(format!("{i}"), stored).unwrap();
        }
        let bytes = zip.finish().unwrap().into_inner();
        assert_eq!(error_of(&bytes).0.kind, ParseErrorKind::TooLarge);
    }

    #[test]
    fn an_xml_bomb_is_refused_without_expanding_entities() {
        let mut dtd = String::from(r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">"#);
        dtd.push_str(r#"<!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">"#);
        for i in 2..=9 {
            let prev = format!("&lol{};", i - 1);
            dtd.push_str(&format!(r#"<!ENTITY lol{i} "{}">"#, prev.repeat(10)));
        }
        dtd.push_str("]>");
        let xml =
            format!(r#"{dtd}<w:document {W}><w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p></w:body></w:document>"#);
        let (error, took) = error_of(&package(&[("word/document.xml", &xml)]));
        assert_eq!(error.kind, ParseErrorKind::Corrupt, "{error:?}");
        assert!(error.message.contains("DTD"), "{}", error.message);
        assert!(took < Duration::from_secs(60), "took {took:?}");
        // An undeclared reference outside any DTD is kept as written.
        let xml = document("<w:p><w:r><w:t>&lol9;</w:t></w:r></w:p>");
        assert_eq!(all_text(&parse_ok(&package(&[("word/document.xml", &xml)]))), "&lol9;");
    }

    #[test]
    fn deeply_nested_xml_is_refused() {
        let depth = 100_000;
        let xml = format!(
            "<w:document {W}><w:body>{}{}</w:body></w:document>",
            "<w:x>".repeat(depth),
            "</w:x>".repeat(depth)
        );
        let (error, took) = error_of(&package(&[("word/document.xml", &xml)]));
        assert_eq!(error.kind, ParseErrorKind::TooLarge, "{error:?}");
        assert!(took < Duration::from_secs(60), "took {took:?}");
        // Styles are bounded the same way.
        let bytes = package(&[("word/document.xml", &document(&para("", "x"))), ("word/styles.xml", &xml)]);
        assert_eq!(error_of(&bytes).0.kind, ParseErrorKind::TooLarge);
    }

    #[test]
    fn the_main_part_is_found_through_the_package_relationships() {
        let rels = r#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="/word/document2.xml"/></Relationships>"#;
        let doc_rels = r#"<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="../word/./styles2.xml"/></Relationships>"#;
        let bytes = package(&[
            ("_rels/.rels", rels),
            ("word/_rels/document2.xml.rels", doc_rels),
            ("Word/Document2.xml", &document(&[para("1", "Heading"), para("", "body")].concat())),
            ("word/styles2.xml", &styles()),
        ]);
        let doc = parse_ok(&bytes);
        assert_eq!(paths(&doc), ["Heading"]);
        assert_eq!(all_text(&doc), "Heading\n\nbody");
    }

    /// The corpus's docx files: every expected phrase is in the text (after
    /// collapsing whitespace), every expected heading is in a heading path.
    #[test]
    fn corpus_documents() {
        assert!(crate::import::corpus_check::check_format("docx", parse, true) >= 7);
    }
}
