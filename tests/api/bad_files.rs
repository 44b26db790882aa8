//! Hostile and broken files through the import endpoint: each answers 415
//! or ends `failed` with a clear error in bounded time, the service stays
//! up, and the next import succeeds. (The parsers' own tests go further;
//! this checks the whole path, parse worker included.)

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{TestApp, corpus_file};

/// Writes a raw DEFLATE stream by hand (one fixed-Huffman block): `prefix`
/// as literals, then `repeat` more copies of its last byte as
/// length-258/distance-1 back-references. A few hundred KB unpack to
/// `repeat` bytes: the stuff of zip and flate bombs, made in no time.
fn deflate_bomb(prefix: &[u8], repeat: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u32,
        n: u32,
    }
    impl Bits {
        fn bit(&mut self, b: u32) {
            self.acc |= (b & 1) << self.n;
            self.n += 1;
            if self.n == 8 {
                self.out.push(self.acc as u8);
                self.acc = 0;
                self.n = 0;
            }
        }
        /// A Huffman code: most significant bit first.
        fn code(&mut self, c: u32, len: u32) {
            for i in (0..len).rev() {
                self.bit(c >> i);
            }
        }
    }
    let mut w = Bits { out: Vec::new(), acc: 0, n: 0 };
    w.bit(1); // final block
    w.bit(1); // fixed Huffman (BTYPE = 01, LSB first)
    w.bit(0);
    for &b in prefix {
        match b {
            0..=143 => w.code(0x30 + u32::from(b), 8),
            _ => w.code(0x190 + u32::from(b) - 144, 9),
        }
    }
    for _ in 0..repeat / 258 {
        w.code(0xC5, 8); // length 258
        w.code(0, 5); // distance 1
    }
    w.code(0, 7); // end of block
    if w.n > 0 {
        w.out.push(w.acc as u8);
    }
    w.out
}

/// A zip archive (deflated entries, written by hand) whose entries may
/// declare any size.
fn zip(entries: &[(&str, Vec<u8>, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, deflated, size) in entries {
        let offset = out.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend_from_slice(&sig.to_le_bytes());
            if central {
                h.extend_from_slice(&20u16.to_le_bytes());
            }
            for v in [20u16, 0, 8, 0, 0] {
                h.extend_from_slice(&v.to_le_bytes());
            }
            for v in [0u32, deflated.len() as u32, *size] {
                h.extend_from_slice(&v.to_le_bytes());
            }
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes());
            if central {
                for v in [0u16, 0, 0] {
                    h.extend_from_slice(&v.to_le_bytes());
                }
                h.extend_from_slice(&0u32.to_le_bytes());
                h.extend_from_slice(&offset.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend_from_slice(deflated);
        central.extend(header(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    for v in [0u16, 0, entries.len() as u16, entries.len() as u16] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

const W: &str = r#"xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main""#;

fn docx_with(document: Vec<u8>, declared: u32) -> Vec<u8> {
    let types = br#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>"#;
    zip(&[
        ("[Content_Types].xml", deflate_bomb(types, 0), types.len() as u32),
        ("word/document.xml", document, declared),
    ])
}

/// A PDF whose one page's content stream is a flate bomb.
fn pdf_flate_bomb() -> Vec<u8> {
    let mut stream = vec![0x78, 0x01];
    stream.extend(deflate_bomb(b"BT /F1 12 Tf 72 700 Td (", 512 * 1024 * 1024));
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    let objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
          /Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>"
            .to_vec(),
        [format!("<< /Length {} /Filter /FlateDecode >>\nstream\n", stream.len()).as_bytes(), &stream, b"\nendstream"]
            .concat(),
    ];
    for (i, body) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        pdf.extend_from_slice(body);
        pdf.extend_from_slice(b"\nendobj\n");
    }
    let xref = pdf.len();
    pdf.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for o in offsets {
        pdf.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    pdf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_hostile_files_fail_cleanly_and_the_service_goes_on() {
    let t = TestApp::spawn(|s| s.set("IMPORT_PARSE_TIMEOUT_SECONDS", "20")).await;
    let c = &t.client;
    let token = c.user("mallory").await;

    let docx = corpus_file("markitdown-test.docx");
    let pdf = corpus_file("pypdf-pdflatex-4-pages.pdf");
    let billion_laughs = format!(
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;"><!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;"><!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;"><!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;"><!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;"><!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;"><!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]><w:document {W}><w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p></w:body></w:document>"#
    );
    let deep = format!("<w:document {W}><w:body>{}</w:body></w:document>", "<w:p>".repeat(100_000));
    let bomb_prefix = format!("<w:document {W}><w:body><w:p><w:r><w:t>a");
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("truncated zip", "report.docx", docx[..docx.len() / 2].to_vec()),
        ("zip garbage", "report.docx", [b"PK\x03\x04".as_slice(), &[0x5a; 4000]].concat()),
        ("docx zip bomb", "bomb.docx", docx_with(deflate_bomb(bomb_prefix.as_bytes(), 1 << 30), 1 << 30)),
        ("docx zip bomb, lying size", "liar.docx", docx_with(deflate_bomb(bomb_prefix.as_bytes(), 1 << 30), 4096)),
        ("xml bomb", "lol.docx", docx_with(deflate_bomb(billion_laughs.as_bytes(), 0), billion_laughs.len() as u32)),
        ("deep xml", "deep.docx", docx_with(deflate_bomb(deep.as_bytes(), 0), deep.len() as u32)),
        ("deep html", "deep.html", format!("<html><body>{}x</body></html>", "<div>".repeat(200_000)).into_bytes()),
        ("pdf garbage", "report.pdf", b"%PDF-1.7\n\x00\x01\x02garbage garbage garbage".to_vec()),
        ("truncated pdf", "report.pdf", pdf[..pdf.len() / 3].to_vec()),
        ("pdf flate bomb", "bomb.pdf", pdf_flate_bomb()),
        ("not a pdf", "report.pdf", b"hello, I am text".to_vec()),
        ("recursive xobjects", "evil.pdf", corpus_file("pdfminer-issue-1113-evil-xobjects.pdf")),
    ];
    for (what, name, bytes) in cases {
        let started = Instant::now();
        let r = c.upload(&token, "/Import_Doc/", name, bytes).await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if status == 415 {
            assert_eq!(body["code"], "unsupported_media_type", "{what}: {body}");
            continue;
        }
        assert_eq!(status, 202, "{what}: {body}");
        let done = c.wait_done(&token, body["task_id"].as_str().unwrap()).await;
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(30), "{what}: took {elapsed:?}");
        if done["status"] == "completed" {
            // Recovering text from a damaged file is fine (the truncated PDF
            // keeps its first page, the evil XObjects say "Hello world").
            assert!(matches!(what, "truncated pdf" | "recursive xobjects"), "{what} imported: {done}");
            continue;
        }
        assert_eq!(done["status"], "failed", "{what}: {done}");
        let error = done["error"].as_str().unwrap();
        assert!(error.len() > 15, "{what}: a readable error: {error}");
    }
    assert_eq!(c.readyz().await.0, 200, "the service is up");
    let task = c.import(&token, "after.md", "# 之后\n\n一切正常。\n".into()).await;
    assert_eq!(c.wait_done(&token, &task).await["status"], "completed", "the next import works");
}
