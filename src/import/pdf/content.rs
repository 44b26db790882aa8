//! The content stream interpreter: runs a page's operators far enough to know where every
//! glyph lands (graphics and text state, text positioning and showing, Form XObjects) and
//! collects the glyphs with their text, position and size for [`super::layout`].
//!
//! Hostile pages are bounded: Form XObjects that draw themselves (directly or through others)
//! are not entered again, nesting is capped, and a page stops being read after a fixed number
//! of operators or glyphs.

use std::collections::HashMap;
use std::rc::Rc;

use lopdf::{Dictionary, Document, Object, ObjectId};

use super::font::{Code, Font};
use super::lexer::{Lexer, Operand};
use super::{get, get_name, resolve, stream_data};

/// Form XObjects nested deeper than this are not entered.
const MAX_FORM_DEPTH: usize = 12;
/// `q` nesting deeper than this is ignored (the state is not saved).
const MAX_SAVE_DEPTH: usize = 256;
/// Operators read per page, all content streams and forms together (a dense page of text
/// has tens of thousands).
const MAX_OPERATORS: u64 = 5_000_000;
/// Operators read in the whole document: many pages that each draw the same heavy form must
/// not add up to hours of work.
const MAX_DOCUMENT_OPERATORS: u64 = 200_000_000;
/// Glyphs kept per page.
const MAX_GLYPHS: usize = 500_000;
/// Decoded bytes of content per page.
const MAX_CONTENT_BYTES: usize = 256 << 20;
/// Bytes of text kept per page.
const MAX_PAGE_TEXT: usize = 32 << 20;

/// An affine transform `[a b c d e f]` as PDF writes it (row vectors: `p' = p × M`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Matrix([f32; 6]);

impl Matrix {
    pub(super) const IDENTITY: Self = Self([1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);

    fn translate(x: f32, y: f32) -> Self {
        Self([1.0, 0.0, 0.0, 1.0, x, y])
    }

    fn from_operands(ops: &[Operand]) -> Option<Self> {
        if ops.len() < 6 {
            return None;
        }
        let mut m = [0.0; 6];
        for (slot, op) in m.iter_mut().zip(&ops[ops.len() - 6..]) {
            *slot = op.number()?;
        }
        Some(Self(m))
    }

    fn from_object(doc: &Document, obj: Option<&Object>) -> Option<Self> {
        let Some(Object::Array(items)) = obj else { return None };
        if items.len() != 6 {
            return None;
        }
        let mut m = [0.0; 6];
        for (slot, item) in m.iter_mut().zip(items) {
            *slot = super::number(doc, item)?;
        }
        Some(Self(m))
    }

    /// `self` applied first, then `other`.
    fn then(self, other: Self) -> Self {
        let [a, b, c, d, e, f] = self.0;
        let [a2, b2, c2, d2, e2, f2] = other.0;
        Self([
            a * a2 + b * c2,
            a * b2 + b * d2,
            c * a2 + d * c2,
            c * b2 + d * d2,
            e * a2 + f * c2 + e2,
            e * b2 + f * d2 + f2,
        ])
    }

    fn apply(self, x: f32, y: f32) -> (f32, f32) {
        let [a, b, c, d, e, f] = self.0;
        (x * a + y * c + e, x * b + y * d + f)
    }

    fn apply_vector(self, x: f32, y: f32) -> (f32, f32) {
        let [a, b, c, d, ..] = self.0;
        (x * a + y * c, x * b + y * d)
    }
}

/// One shown glyph, in device space.
#[derive(Debug, Clone, Copy)]
pub(super) struct Glyph {
    /// Origin of the glyph.
    pub(super) x: f32,
    pub(super) y: f32,
    /// The direction in which text advances (a unit vector).
    pub(super) dir: (f32, f32),
    /// How far the glyph advances along `dir`.
    pub(super) advance: f32,
    /// The font size as drawn (the height of an em).
    pub(super) size: f32,
    /// Its text, as a range of [`PageContent::text`].
    pub(super) start: u32,
    pub(super) len: u32,
}

/// What the interpreter found on a page.
#[derive(Debug, Default)]
pub(super) struct PageContent {
    pub(super) glyphs: Vec<Glyph>,
    pub(super) text: String,
    /// Some content could not be decoded (a broken stream or filter).
    pub(super) damaged: bool,
    /// The page ran into one of the budgets and was cut short.
    pub(super) truncated: bool,
}

#[derive(Clone)]
struct GraphicsState {
    ctm: Matrix,
    font: Option<Rc<Font>>,
    font_size: f32,
    char_spacing: f32,
    word_spacing: f32,
    horizontal_scale: f32,
    leading: f32,
    rise: f32,
}

impl GraphicsState {
    fn new(ctm: Matrix) -> Self {
        Self {
            ctm,
            font: None,
            font_size: 0.0,
            char_spacing: 0.0,
            word_spacing: 0.0,
            horizontal_scale: 1.0,
            leading: 0.0,
            rise: 0.0,
        }
    }
}

/// Runs content streams; one per document, so that fonts are read once.
pub(super) struct Interpreter<'d> {
    doc: &'d Document,
    fonts: HashMap<FontKey, Rc<Font>>,
    codes: Vec<Code>,
    operators: u64,
    document_operators: u64,
    content_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FontKey {
    Object(ObjectId),
    /// A font dictionary written directly into a resource dictionary, keyed by its address
    /// (the document is not changed while it is read, so addresses are stable).
    Direct(usize),
}

impl<'d> Interpreter<'d> {
    pub(super) fn new(doc: &'d Document) -> Self {
        Self { doc, fonts: HashMap::new(), codes: Vec::new(), operators: 0, document_operators: 0, content_bytes: 0 }
    }

    /// Reads one page.
    pub(super) fn page(&mut self, page: &'d Dictionary) -> PageContent {
        self.operators = 0;
        self.content_bytes = 0;
        let mut out = PageContent::default();
        let resources = inherited(self.doc, page, b"Resources").and_then(|r| match r {
            Object::Dictionary(d) => Some(d),
            _ => None,
        });
        let mut data = Vec::new();
        let streams: Vec<&Object> = match page.get(b"Contents").ok().map(|c| resolve(self.doc, c)) {
            Some(Object::Array(items)) => items.iter().collect(),
            Some(other) => vec![other],
            None => Vec::new(),
        };
        // Contents may be split anywhere between tokens, so the parts are read as one stream.
        for item in streams {
            match resolve(self.doc, item) {
                Object::Stream(s) => match stream_data(self.doc, s, MAX_CONTENT_BYTES.saturating_sub(data.len())) {
                    Some(bytes) => {
                        data.extend_from_slice(&bytes);
                        data.push(b'\n');
                    }
                    None => out.damaged = true,
                },
                Object::Null => {}
                _ => out.damaged = true,
            }
        }
        self.content_bytes = data.len();
        let mut stack = Vec::new();
        self.run(&data, resources, GraphicsState::new(Matrix::IDENTITY), &mut out, &mut stack);
        out
    }

    fn font(&mut self, resources: Option<&'d Dictionary>, name: &[u8]) -> Option<Rc<Font>> {
        let fonts = match resources.and_then(|r| get(self.doc, r, b"Font")) {
            Some(Object::Dictionary(d)) => d,
            _ => return None,
        };
        let entry = fonts.get(name).ok()?;
        let (key, dict) = match entry {
            Object::Reference(id) => match resolve(self.doc, entry) {
                Object::Dictionary(d) => (FontKey::Object(*id), d),
                _ => return None,
            },
            Object::Dictionary(d) => (FontKey::Direct(d as *const Dictionary as usize), d),
            _ => return None,
        };
        if let Some(font) = self.fonts.get(&key) {
            return Some(font.clone());
        }
        let font = Rc::new(Font::load(self.doc, dict));
        self.fonts.insert(key, font.clone());
        Some(font)
    }

    fn run(
        &mut self,
        data: &[u8],
        resources: Option<&'d Dictionary>,
        initial: GraphicsState,
        out: &mut PageContent,
        forms: &mut Vec<ObjectId>,
    ) {
        let mut lexer = Lexer::new(data);
        let mut operands = Vec::new();
        let mut gs = initial;
        let mut saved: Vec<GraphicsState> = Vec::new();
        let mut tm = Matrix::IDENTITY;
        let mut tlm = Matrix::IDENTITY;
        while let Some(op) = lexer.next_operation(&mut operands) {
            self.operators += 1;
            self.document_operators += 1;
            if self.operators > MAX_OPERATORS
                || self.document_operators > MAX_DOCUMENT_OPERATORS
                || out.glyphs.len() >= MAX_GLYPHS
            {
                out.truncated = true;
                return;
            }
            let num = |i: usize| -> Option<f32> {
                let idx = operands.len().checked_sub(i)?;
                operands.get(idx).and_then(Operand::number)
            };
            match op {
                b"q" if saved.len() < MAX_SAVE_DEPTH => saved.push(gs.clone()),
                b"Q" => {
                    if let Some(s) = saved.pop() {
                        gs = s;
                    }
                }
                b"cm" => {
                    if let Some(m) = Matrix::from_operands(&operands) {
                        gs.ctm = m.then(gs.ctm);
                    }
                }
                b"BT" => {
                    tm = Matrix::IDENTITY;
                    tlm = Matrix::IDENTITY;
                }
                b"Tc" => gs.char_spacing = num(1).unwrap_or(gs.char_spacing),
                b"Tw" => gs.word_spacing = num(1).unwrap_or(gs.word_spacing),
                b"Tz" => gs.horizontal_scale = num(1).map_or(gs.horizontal_scale, |v| v / 100.0),
                b"TL" => gs.leading = num(1).unwrap_or(gs.leading),
                b"Ts" => gs.rise = num(1).unwrap_or(gs.rise),
                b"Tf" => {
                    if let (Some(Operand::Name(name)), Some(size)) =
                        (operands.len().checked_sub(2).and_then(|i| operands.get(i)), num(1))
                    {
                        gs.font = self.font(resources, name);
                        gs.font_size = size;
                    }
                }
                b"Td" | b"TD" => {
                    if let (Some(tx), Some(ty)) = (num(2), num(1)) {
                        if op == b"TD" {
                            gs.leading = -ty;
                        }
                        tlm = Matrix::translate(tx, ty).then(tlm);
                        tm = tlm;
                    }
                }
                b"Tm" => {
                    if let Some(m) = Matrix::from_operands(&operands) {
                        tlm = m;
                        tm = m;
                    }
                }
                b"T*" => {
                    tlm = Matrix::translate(0.0, -gs.leading).then(tlm);
                    tm = tlm;
                }
                b"Tj" | b"'" | b"\"" => {
                    if op == b"\""
                        && let (Some(aw), Some(ac)) = (num(3), num(2))
                    {
                        gs.word_spacing = aw;
                        gs.char_spacing = ac;
                    }
                    if op != b"Tj" {
                        tlm = Matrix::translate(0.0, -gs.leading).then(tlm);
                        tm = tlm;
                    }
                    if let Some(Operand::String(s)) = operands.last() {
                        self.show(s, &gs, &mut tm, out);
                    }
                }
                b"TJ" => {
                    if let Some(Operand::Array(items)) = operands.last() {
                        for item in items {
                            match item {
                                Operand::String(s) => self.show(s, &gs, &mut tm, out),
                                Operand::Number(n) if n.is_finite() => {
                                    let shift = -n / 1000.0 * gs.font_size;
                                    let vertical = gs.font.as_ref().is_some_and(|f| f.vertical);
                                    tm = if vertical {
                                        Matrix::translate(0.0, shift).then(tm)
                                    } else {
                                        Matrix::translate(shift * gs.horizontal_scale, 0.0).then(tm)
                                    };
                                }
                                _ => {}
                            }
                        }
                    }
                }
                b"Do" => {
                    if let Some(Operand::Name(name)) = operands.last() {
                        self.form(resources, name, &gs, out, forms);
                    }
                }
                b"ID" => lexer.skip_inline_image_data(),
                _ => {}
            }
        }
    }

    /// Runs a Form XObject named `name`, unless it is an image, is already being drawn (a
    /// cycle) or is nested too deep.
    fn form(
        &mut self,
        resources: Option<&'d Dictionary>,
        name: &[u8],
        gs: &GraphicsState,
        out: &mut PageContent,
        forms: &mut Vec<ObjectId>,
    ) {
        let Some(Object::Dictionary(xobjects)) = resources.and_then(|r| get(self.doc, r, b"XObject")) else {
            return;
        };
        let Ok(Object::Reference(id)) = xobjects.get(name) else { return };
        if forms.contains(id) || forms.len() >= MAX_FORM_DEPTH {
            return;
        }
        let Ok(Object::Stream(stream)) = self.doc.get_object(*id) else { return };
        if get_name(self.doc, &stream.dict, b"Subtype") != Some(b"Form".as_slice()) {
            return;
        }
        let Some(data) = stream_data(self.doc, stream, MAX_CONTENT_BYTES.saturating_sub(self.content_bytes)) else {
            out.damaged = true;
            return;
        };
        self.content_bytes += data.len();
        let matrix = Matrix::from_object(self.doc, get(self.doc, &stream.dict, b"Matrix")).unwrap_or(Matrix::IDENTITY);
        let form_resources = match get(self.doc, &stream.dict, b"Resources") {
            Some(Object::Dictionary(d)) => Some(d),
            _ => resources,
        };
        let mut state = gs.clone();
        state.ctm = matrix.then(gs.ctm);
        forms.push(*id);
        self.run(&data, form_resources, state, out, forms);
        forms.pop();
    }

    /// Shows a string: decodes its codes and records a glyph for each, advancing the text
    /// matrix as the PDF specification (9.4.4) says.
    fn show(&mut self, bytes: &[u8], gs: &GraphicsState, tm: &mut Matrix, out: &mut PageContent) {
        let Some(font) = gs.font.clone() else { return };
        let mut codes = std::mem::take(&mut self.codes);
        codes.clear();
        font.decode(bytes, &mut codes);
        let size = gs.font_size;
        let scale = gs.horizontal_scale;
        for code in &codes {
            let trm = Matrix([size * scale, 0.0, 0.0, size, 0.0, gs.rise]).then(*tm).then(gs.ctm);
            let word_spacing = if code.is_space { gs.word_spacing } else { 0.0 };
            let (tx, ty) = if font.vertical {
                // Vertical fonts advance by their vertical metrics, one em downwards unless
                // /W2 says otherwise (it rarely does, and only the direction matters here).
                (0.0, -size + gs.char_spacing + word_spacing)
            } else {
                ((code.width * size + gs.char_spacing + word_spacing) * scale, 0.0)
            };
            let text_to_device = tm.then(gs.ctm);
            let (ax, ay) = text_to_device.apply_vector(tx, ty);
            let advance = (ax * ax + ay * ay).sqrt();
            let dir = if advance > 1e-6 {
                (ax / advance, ay / advance)
            } else {
                // A glyph that does not advance still has the direction of its baseline.
                let (bx, by) = trm.apply_vector(1.0, 0.0);
                let len = (bx * bx + by * by).sqrt();
                if len > 1e-6 { (bx / len, by / len) } else { (1.0, 0.0) }
            };
            let (hx, hy) = trm.apply_vector(0.0, 1.0);
            let glyph_size = (hx * hx + hy * hy).sqrt();
            let room = out.glyphs.len() < MAX_GLYPHS && out.text.len() < MAX_PAGE_TEXT;
            if !code.text.is_empty() && room && glyph_size.is_finite() {
                let (x, y) = trm.apply(0.0, 0.0);
                if x.is_finite() && y.is_finite() {
                    let start = out.text.len() as u32;
                    out.text.push_str(&code.text);
                    out.glyphs.push(Glyph {
                        x,
                        y,
                        dir,
                        advance: if advance.is_finite() { advance } else { 0.0 },
                        size: glyph_size,
                        start,
                        len: code.text.len() as u32,
                    });
                }
            }
            *tm = Matrix::translate(tx, ty).then(*tm);
        }
        self.codes = codes;
    }
}

/// An inheritable page attribute (`/Resources`, `/MediaBox`, ...), looked up the page tree.
fn inherited<'d>(doc: &'d Document, page: &'d Dictionary, key: &[u8]) -> Option<&'d Object> {
    let mut node = page;
    for _ in 0..64 {
        if let Some(value) = get(doc, node, key) {
            return Some(value);
        }
        match get(doc, node, b"Parent") {
            Some(Object::Dictionary(parent)) => node = parent,
            _ => return None,
        }
    }
    None
}
