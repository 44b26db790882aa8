//! Reading order: turns a page's glyphs into text.
//!
//! Glyphs are first grouped by writing direction (text drawn sideways is laid out in its own
//! frame). Within a direction, consecutive glyphs on one baseline join into line fragments,
//! with a space wherever the gap between two glyphs is wider than a fraction of an em (PDFs
//! often position words instead of drawing spaces). Fragments are then ordered by a recursive
//! XY cut: the widest band of empty space, horizontal or vertical, splits the page into parts
//! read top-to-bottom or left-to-right, so that columns are read one after the other. Lines
//! follow each other with a newline, or a blank line where the vertical gap or a change of
//! column shows a new paragraph.

use super::content::{Glyph, PageContent};

/// A gap wider than this (in ems) between two glyphs of a line is a word space.
const WORD_GAP: f32 = 0.15;
/// Glyphs this far apart (in ems) on one baseline are not joined into one fragment.
const MAX_JOIN_GAP: f32 = 3.0;
/// Lines whose baselines are further apart than this (in ems) start a new paragraph.
const PARAGRAPH_GAP: f32 = 1.75;
/// Pages with more fragments than this are ordered by a plain sort (the XY cut is quadratic
/// in the worst case).
const MAX_XY_LINES: usize = 3000;

/// A line fragment in its direction's frame (x along the text, y up).
#[derive(Debug, Clone)]
struct Line {
    x0: f32,
    x1: f32,
    y: f32,
    size: f32,
    text: String,
}

impl Line {
    fn bottom(&self) -> f32 {
        self.y - 0.25 * self.size
    }
    fn top(&self) -> f32 {
        self.y + 0.75 * self.size
    }
}

/// Which of the four directions a glyph's advance points to: 0 right, 1 up, 2 left, 3 down.
fn quadrant(dir: (f32, f32)) -> usize {
    let (dx, dy) = dir;
    if dx.abs() >= dy.abs() {
        if dx >= 0.0 { 0 } else { 2 }
    } else if dy > 0.0 {
        1
    } else {
        3
    }
}

/// Rotates a point so that direction `quadrant` becomes "right".
fn rotate(quadrant: usize, x: f32, y: f32) -> (f32, f32) {
    match quadrant {
        1 => (y, -x),
        2 => (-x, -y),
        3 => (-y, x),
        _ => (x, y),
    }
}

/// The text of a page, in reading order.
pub(super) fn page_text(page: &PageContent) -> String {
    let mut groups: [Vec<&Glyph>; 4] = Default::default();
    for glyph in &page.glyphs {
        groups[quadrant(glyph.dir)].push(glyph);
    }
    let mut order: Vec<usize> = (0..4).filter(|&q| !groups[q].is_empty()).collect();
    order.sort_by_key(|&q| std::cmp::Reverse(groups[q].len()));
    let mut out = String::new();
    for q in order {
        let lines = build_lines(page, q, &groups[q]);
        let text = join_lines(&lines, &xy_order(&lines));
        if text.trim().is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&text);
    }
    out
}

fn build_lines(page: &PageContent, quadrant: usize, glyphs: &[&Glyph]) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    let mut current: Option<Line> = None;
    let mut previous: Option<(f32, f32, &str)> = None;
    for glyph in glyphs {
        let text = &page.text[glyph.start as usize..(glyph.start + glyph.len) as usize];
        let (x, y) = rotate(quadrant, glyph.x, glyph.y);
        let size = if glyph.size > 0.0 { glyph.size } else { 1.0 };
        // A glyph drawn again over itself (fake bold, shadows) is dropped.
        if let Some((px, py, ptext)) = previous
            && ptext == text
            && (px - x).abs() < 0.2 * size
            && (py - y).abs() < 0.2 * size
        {
            continue;
        }
        previous = Some((x, y, text));
        if let Some(line) = current.as_mut() {
            let em = line.size.max(size);
            let gap = x - line.x1;
            let same_baseline = (y - line.y).abs() <= 0.5 * em;
            if same_baseline && gap >= -0.5 * em && gap <= MAX_JOIN_GAP * em {
                if gap > WORD_GAP * em && !line.text.ends_with(' ') && !text.starts_with(' ') {
                    line.text.push(' ');
                }
                line.text.push_str(text);
                line.x1 = line.x1.max(x + glyph.advance);
                line.size = line.size.max(size);
                continue;
            }
            lines.extend(current.take());
        }
        current = Some(Line { x0: x, x1: x + glyph.advance, y, size, text: text.to_string() });
    }
    lines.extend(current);
    lines.retain(|l| !l.text.trim().is_empty());
    lines
}

/// The order in which to read `lines`, by recursive XY cut.
fn xy_order(lines: &[Line]) -> Vec<usize> {
    let all: Vec<usize> = (0..lines.len()).collect();
    if lines.len() > MAX_XY_LINES {
        return reading_sort(lines, all);
    }
    let mut out = Vec::with_capacity(lines.len());
    // An explicit stack: a page of many lines would otherwise recurse once per line.
    let mut stack = vec![all];
    while let Some(set) = stack.pop() {
        if set.len() <= 1 {
            out.extend(set);
            continue;
        }
        let horizontal = best_horizontal_cut(lines, &set);
        let vertical = best_vertical_cut(lines, &set);
        let split = match (horizontal, vertical) {
            (Some(h), Some(v)) => Some(if v.0 > h.0 { v } else { h }),
            (h, v) => h.or(v),
        };
        match split {
            // The first part is read first, so it goes on the stack last.
            Some((_, first, second)) => {
                stack.push(second);
                stack.push(first);
            }
            None => out.extend(reading_sort(lines, set)),
        }
    }
    out
}

/// Top to bottom, then left to right.
fn reading_sort(lines: &[Line], mut set: Vec<usize>) -> Vec<usize> {
    set.sort_by(|&a, &b| {
        let (la, lb) = (&lines[a], &lines[b]);
        if (la.y - lb.y).abs() <= 0.3 * la.size.min(lb.size) { la.x0.total_cmp(&lb.x0) } else { lb.y.total_cmp(&la.y) }
    });
    set
}

type Cut = (f32, Vec<usize>, Vec<usize>);

/// The widest empty horizontal band across all of `set`: (its height, lines above, below).
fn best_horizontal_cut(lines: &[Line], set: &[usize]) -> Option<Cut> {
    let mut sorted = set.to_vec();
    sorted.sort_by(|&a, &b| lines[b].top().total_cmp(&lines[a].top()));
    let mut lowest = f32::INFINITY;
    let mut best: Option<(f32, usize)> = None;
    for (i, &idx) in sorted.iter().enumerate() {
        let line = &lines[idx];
        if i > 0 {
            let gap = lowest - line.top();
            if gap > 0.0 && best.is_none_or(|(g, _)| gap > g) {
                best = Some((gap, i));
            }
        }
        lowest = lowest.min(line.bottom());
    }
    let (gap, at) = best?;
    let second = sorted.split_off(at);
    Some((gap, sorted, second))
}

/// The widest empty vertical band across all of `set`: (its width, lines left, right). Only
/// a band at least half an em wide counts, so that ragged line ends are no columns.
fn best_vertical_cut(lines: &[Line], set: &[usize]) -> Option<Cut> {
    let mut sorted = set.to_vec();
    sorted.sort_by(|&a, &b| lines[a].x0.total_cmp(&lines[b].x0));
    let mut rightmost = f32::NEG_INFINITY;
    let mut best: Option<(f32, usize)> = None;
    for (i, &idx) in sorted.iter().enumerate() {
        let line = &lines[idx];
        if i > 0 {
            let gap = line.x0 - rightmost;
            if gap > 0.5 * line.size && best.is_none_or(|(g, _)| gap > g) {
                best = Some((gap, i));
            }
        }
        rightmost = rightmost.max(line.x1);
    }
    let (gap, at) = best?;
    let second = sorted.split_off(at);
    Some((gap, sorted, second))
}

/// Joins lines in reading order: a space between fragments of one row, a newline between
/// lines of one paragraph, a blank line otherwise.
fn join_lines(lines: &[Line], order: &[usize]) -> String {
    let mut out = String::new();
    let mut previous: Option<&Line> = None;
    for &i in order {
        let line = &lines[i];
        if let Some(prev) = previous {
            let em = prev.size.max(line.size);
            let drop = prev.y - line.y;
            let overlaps = line.x0 < prev.x1 + em && line.x1 > prev.x0 - em;
            if drop.abs() <= 0.5 * em && line.x0 >= prev.x1 - 0.5 * em {
                out.push(' ');
            } else if drop > 0.0 && drop <= PARAGRAPH_GAP * em && overlaps {
                out.push('\n');
            } else {
                out.push_str("\n\n");
            }
        }
        out.push_str(line.text.trim_end());
        previous = Some(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(items: &[(&str, f32, f32)]) -> PageContent {
        // Each item is a word drawn at (x, y) in 10-point text, 5 points per character.
        let mut page = PageContent::default();
        for (word, x, y) in items {
            for (i, ch) in word.chars().enumerate() {
                let start = page.text.len() as u32;
                page.text.push(ch);
                page.glyphs.push(Glyph {
                    x: x + 5.0 * i as f32,
                    y: *y,
                    dir: (1.0, 0.0),
                    advance: 5.0,
                    size: 10.0,
                    start,
                    len: ch.len_utf8() as u32,
                });
            }
        }
        page
    }

    #[test]
    fn words_lines_and_paragraphs() {
        let p =
            page(&[("second", 100.0, 688.0), ("Hello", 100.0, 700.0), ("world", 130.0, 700.0), ("Far", 100.0, 600.0)]);
        assert_eq!(page_text(&p), "Hello world\nsecond\n\nFar");
    }

    #[test]
    fn two_columns_are_read_one_after_the_other() {
        let p = page(&[
            ("Title", 100.0, 760.0),
            ("left1", 100.0, 700.0),
            ("right1", 300.0, 700.0),
            ("left2", 100.0, 688.0),
            ("right2", 300.0, 688.0),
        ]);
        assert_eq!(page_text(&p), "Title\n\nleft1\nleft2\n\nright1\nright2");
    }

    #[test]
    fn rotated_text_and_fake_bold() {
        let mut p = page(&[("AAbb", 100.0, 700.0)]);
        // "AAbb" drawn as A A b b with each pair at one spot is fake bold for "Ab".
        p.glyphs[1].x = p.glyphs[0].x + 0.5;
        p.glyphs[2].x = p.glyphs[0].x + 5.0;
        p.glyphs[3].x = p.glyphs[2].x + 0.5;
        assert_eq!(page_text(&p), "Ab");
        let mut p = page(&[("up", 50.0, 100.0)]);
        p.glyphs[1].x = 50.0;
        p.glyphs[1].y = 105.0;
        for g in &mut p.glyphs {
            g.dir = (0.0, 1.0);
        }
        assert_eq!(page_text(&p), "up");
    }
}
