//! Recovery of PDFs whose cross-reference data is missing or wrong.
//!
//! lopdf reads a file through its `startxref` offset and cross-reference table and refuses
//! files where these are missing or broken (hand-written files, truncated downloads, files
//! with a damaged trailer). Like pdfminer and most viewers, we then scan the bytes for
//! `N G obj` headers, take the last definition of each object, find the trailer entries
//! (`/Root`, `/Info`, `/Encrypt`, `/ID`; or the catalog object when no trailer names it) and
//! write the objects out again with a fresh cross-reference table and trailer, so that lopdf
//! can load the file as usual. Streams whose `/Length` is wrong (common in hand-written and
//! truncated files, and fatal to lopdf's parser) get the length found by looking for
//! `endstream`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' | b'\0')
}

fn is_regular(b: u8) -> bool {
    !is_whitespace(b) && !b"()<>[]{}/%".contains(&b)
}

/// Finds `N G obj` headers: object number to (generation, offset of the header), the last
/// definition of an object winning as in an incrementally updated file.
pub(super) fn scan_objects(bytes: &[u8]) -> BTreeMap<u32, (u16, usize)> {
    header_offsets(bytes).into_iter().map(|(number, generation, start)| (number, (generation, start))).collect()
}

/// Every `N G obj` header in file order: (number, generation, offset).
fn header_offsets(bytes: &[u8]) -> Vec<(u32, u16, usize)> {
    let mut headers = Vec::new();
    let mut from = 0;
    while let Some(found) = find(&bytes[from..], b"obj") {
        let at = from + found;
        from = at + 3;
        if bytes.get(at + 3).is_some_and(|&b| is_regular(b)) {
            continue;
        }
        if let Some(header) = object_header_before(bytes, at) {
            headers.push(header);
        }
    }
    headers
}

/// Reads `N G ` backwards from the `obj` keyword at `at`.
fn object_header_before(bytes: &[u8], at: usize) -> Option<(u32, u16, usize)> {
    let mut i = at;
    let skip_space = |i: &mut usize| -> bool {
        let start = *i;
        while *i > 0 && is_whitespace(bytes[*i - 1]) {
            *i -= 1;
        }
        *i < start
    };
    let digits = |i: &mut usize| -> Option<u64> {
        let end = *i;
        while *i > 0 && bytes[*i - 1].is_ascii_digit() && end - *i < 10 {
            *i -= 1;
        }
        std::str::from_utf8(&bytes[*i..end]).ok()?.parse().ok()
    };
    skip_space(&mut i);
    if i == at && at > 0 && bytes[at - 1].is_ascii_digit() {
        // `0obj` is not a header.
        return None;
    }
    let generation = digits(&mut i)?;
    if !skip_space(&mut i) {
        return None;
    }
    let number = digits(&mut i)?;
    // The number must start a token.
    if i > 0 && is_regular(bytes[i - 1]) {
        return None;
    }
    Some((u32::try_from(number).ok()?, u16::try_from(generation).ok()?, i))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

/// The last `key N G R` in the file, as `N G R` text.
pub(super) fn last_reference(bytes: &[u8], key: &[u8]) -> Option<String> {
    let mut end = bytes.len();
    while let Some(at) = rfind(&bytes[..end], key) {
        end = at;
        let rest = &bytes[at + key.len()..];
        // The key must be the whole name (`/Root`, not `/RootX`).
        if rest.first().is_some_and(|&b| is_regular(b)) {
            continue;
        }
        let text = String::from_utf8_lossy(&rest[..rest.len().min(40)]).into_owned();
        let mut parts = text.split_ascii_whitespace();
        let (Some(n), Some(g), Some(r)) = (parts.next(), parts.next(), parts.next()) else { continue };
        if let (Ok(n), Ok(g)) = (n.parse::<u32>(), g.parse::<u16>())
            && r.starts_with('R')
        {
            return Some(format!("{n} {g} R"));
        }
    }
    None
}

/// The last `/ID [<...> <...>]` array in the file, as written (needed to decrypt).
fn last_id(bytes: &[u8]) -> Option<String> {
    let at = rfind(bytes, b"/ID")?;
    let rest = &bytes[at + 3..];
    let open = rest.iter().take(8).position(|&b| b == b'[')?;
    let close = rest.iter().skip(open).take(300).position(|&b| b == b']')? + open;
    let array = &rest[open..=close];
    array
        .iter()
        .all(|b| b.is_ascii_hexdigit() || b"[]<> \r\n\t".contains(b))
        .then(|| String::from_utf8_lossy(array).into_owned())
}

/// The catalog object, for files whose trailer does not name it.
fn find_catalog(bytes: &[u8], objects: &BTreeMap<u32, (u16, usize)>) -> Option<String> {
    for (number, (generation, offset)) in objects {
        let body = &bytes[*offset..bytes.len().min(offset + 4096)];
        let end = find(body, b"endobj").unwrap_or(body.len());
        let body = &body[..end];
        let compact: Vec<u8> = body.iter().copied().filter(|b| !is_whitespace(*b)).collect();
        if find(&compact, b"/Type/Catalog").is_some() {
            return Some(format!("{number} {generation} R"));
        }
    }
    None
}

/// The file written out again from the objects found by scanning, with a new
/// cross-reference table and trailer; `None` when no objects or no catalog can be found.
pub(super) fn rebuild(bytes: &[u8]) -> Option<Vec<u8>> {
    let headers = header_offsets(bytes);
    let objects: BTreeMap<u32, (u16, usize)> = headers.iter().map(|&(n, g, at)| (n, (g, at))).collect();
    if objects.is_empty() {
        return None;
    }
    let root = last_reference(bytes, b"/Root").or_else(|| find_catalog(bytes, &objects))?;
    // An object ends where the next header (in file order) begins.
    let mut starts: Vec<usize> = headers.iter().map(|h| h.2).collect();
    starts.sort_unstable();
    let extent_end = |start: usize| -> usize {
        let i = starts.partition_point(|&s| s <= start);
        starts.get(i).copied().unwrap_or(bytes.len())
    };

    let mut out = Vec::with_capacity(bytes.len() + objects.len() * 32 + 256);
    out.extend_from_slice(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n");
    let mut table = String::from("xref\n0 1\n0000000000 65535 f\r\n");
    for (number, (generation, start)) in &objects {
        let _ = write!(table, "{number} 1\n{:010} {generation:05} n\r\n", out.len());
        write_object(&bytes[*start..extent_end(*start)], &mut out);
    }
    let xref_at = out.len();
    let size = objects.keys().next_back().map_or(1, |n| n + 1);
    let _ = write!(table, "trailer\n<< /Size {size} /Root {root}");
    if let Some(info) = last_reference(bytes, b"/Info") {
        let _ = write!(table, " /Info {info}");
    }
    if let Some(encrypt) = last_reference(bytes, b"/Encrypt") {
        let _ = write!(table, " /Encrypt {encrypt}");
        if let Some(id) = last_id(bytes) {
            let _ = write!(table, " /ID {id}");
        }
    }
    let _ = write!(table, " >>\nstartxref\n{xref_at}\n%%EOF\n");
    out.extend_from_slice(table.as_bytes());
    Some(out)
}

/// Writes one object (the bytes from its header to the next header), ending it with
/// `endobj` and correcting the `/Length` of a stream where it does not match the data.
fn write_object(object: &[u8], out: &mut Vec<u8>) {
    let end = find(object, b"endobj").map_or(object.len(), |e| e + 6);
    let object = &object[..end];
    let Some((keyword, data_start)) = stream_start(object) else {
        out.extend_from_slice(object);
        if !object.ends_with(b"endobj") {
            out.extend_from_slice(b"\nendobj");
        }
        out.push(b'\n');
        return;
    };
    let dict = &object[..keyword];
    let length = declared_length(dict);
    let fits = length.as_ref().is_some_and(|(_, _, len)| {
        let after = data_start.saturating_add(*len);
        after <= object.len() && {
            let rest = &object[after..];
            let skip = rest.iter().take_while(|&&b| is_whitespace(b)).count();
            rest[skip..].starts_with(b"endstream")
        }
    });
    if fits {
        out.extend_from_slice(object);
        out.push(b'\n');
        return;
    }
    // The data runs to `endstream` (or to the end of what there is), less one end of line.
    let mut data_end = find(&object[data_start..], b"endstream").map_or(object.len(), |e| data_start + e);
    if data_end > data_start && object[data_end - 1] == b'\n' {
        data_end -= 1;
    }
    if data_end > data_start && object[data_end - 1] == b'\r' {
        data_end -= 1;
    }
    let data = &object[data_start..data_end];
    match length {
        Some((from, to, _)) => {
            out.extend_from_slice(&dict[..from]);
            out.extend_from_slice(format!("/Length {}", data.len()).as_bytes());
            out.extend_from_slice(&dict[to..]);
        }
        None => {
            // No /Length at all: add one just inside the dictionary.
            let open = find(dict, b"<<").map_or(0, |o| o + 2);
            out.extend_from_slice(&dict[..open]);
            out.extend_from_slice(format!(" /Length {} ", data.len()).as_bytes());
            out.extend_from_slice(&dict[open..]);
        }
    }
    out.extend_from_slice(b"stream\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\nendstream\nendobj\n");
}

/// Where the `stream` keyword of an object is, and where its data starts.
fn stream_start(object: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(found) = find(&object[from..], b"stream") {
        let at = from + found;
        from = at + 6;
        if at >= 3 && &object[at - 3..at] == b"end" {
            continue;
        }
        let before = object[..at].iter().rev().find(|&&b| !is_whitespace(b));
        if before != Some(&b'>') {
            continue;
        }
        let mut data = at + 6;
        if object.get(data) == Some(&b'\r') {
            data += 1;
        }
        if object.get(data) == Some(&b'\n') {
            data += 1;
        }
        return Some((at, data));
    }
    None
}

/// The `/Length` entry of a stream dictionary: where it starts and ends, and its value when
/// it is a direct number (an indirect one counts as unknown).
fn declared_length(dict: &[u8]) -> Option<(usize, usize, usize)> {
    let at = rfind(dict, b"/Length")?;
    let value_start = at + 7;
    if dict.get(value_start).is_some_and(|&b| is_regular(b)) {
        return None;
    }
    let rest = &dict[value_start..];
    let tokens: Vec<(usize, usize)> = {
        let mut tokens = Vec::new();
        let mut i = 0;
        while tokens.len() < 3 && i < rest.len() {
            while i < rest.len() && is_whitespace(rest[i]) {
                i += 1;
            }
            let start = i;
            while i < rest.len() && is_regular(rest[i]) {
                i += 1;
            }
            if i == start {
                break;
            }
            tokens.push((start, i));
        }
        tokens
    };
    let text = |t: (usize, usize)| &rest[t.0..t.1];
    let first = *tokens.first()?;
    let value: usize = std::str::from_utf8(text(first)).ok()?.parse().ok()?;
    if tokens.len() == 3 && text(tokens[2]) == b"R" && text(tokens[1]).iter().all(u8::is_ascii_digit) {
        // `N G R`: replace the whole reference; the value is unknown.
        return Some((at, value_start + tokens[2].1, usize::MAX));
    }
    Some((at, value_start + first.1, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_object_headers_and_the_last_definition_wins() {
        let data = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n2 0 obj (x) endobj 10obj 1 0 obj\n<< >> endobj";
        let objects = scan_objects(data);
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[&1].1, find(data, b"1 0 obj\n<< >>").unwrap());
        assert_eq!(objects[&2], (0, find(data, b"2 0 obj").unwrap()));
    }

    #[test]
    fn rebuild_uses_the_trailer_or_the_catalog() {
        let data = b"%PDF-1.4\n1 0 obj\n<< /Type/Catalog /Pages 2 0 R >>\nendobj\n";
        let rebuilt = String::from_utf8_lossy(&rebuild(data).unwrap()).into_owned();
        assert!(rebuilt.contains("/Root 1 0 R"), "{rebuilt}");
        assert!(rebuilt.contains("1 1\n0000000015 00000 n"), "{rebuilt}");
        assert!(rebuild(b"no objects here").is_none());
        let with_trailer = b"3 0 obj <<>> endobj trailer << /Root 3 0 R /Info 4 0 R >>";
        let rebuilt = String::from_utf8_lossy(&rebuild(with_trailer).unwrap()).into_owned();
        assert!(rebuilt.contains("/Root 3 0 R /Info 4 0 R"), "{rebuilt}");
    }

    #[test]
    fn stream_lengths_are_corrected() {
        let mut out = Vec::new();
        write_object(b"5 0 obj\n<< /Length 3 >>\nstream\nBT (Hello) Tj ET\nendstream\nendobj\n6 0 obj", &mut out);
        assert_eq!(out, b"5 0 obj\n<< /Length 16 >>\nstream\nBT (Hello) Tj ET\nendstream\nendobj\n");
        let mut out = Vec::new();
        write_object(b"5 0 obj << /Length 9 0 R /Filter /X >> stream\r\nabc\r\nendstream endobj", &mut out);
        assert_eq!(out, b"5 0 obj << /Length 3 /Filter /X >> stream\nabc\nendstream\nendobj\n");
        // A truncated stream keeps what there is; a correct one is copied as it is.
        let mut out = Vec::new();
        write_object(b"5 0 obj <</Filter/X>>stream\nabcdef", &mut out);
        assert_eq!(out, b"5 0 obj << /Length 6 /Filter/X>>stream\nabcdef\nendstream\nendobj\n");
        let good = b"5 0 obj <</Length 3>>stream\nabc\nendstream\nendobj";
        let mut out = Vec::new();
        write_object(good, &mut out);
        assert_eq!(&out[..good.len()], good);
    }
}
