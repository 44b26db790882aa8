//! Times the CPU-bound part of a text import (decoding, parsing, bounding,
//! chunking, search text) on inputs that used to be slow, and prints the
//! time per MB of each, so one run shows whether that time stays flat as
//! files and lines grow. Run through `bench/chunk.sh`.
//!
//! Cases: a 1, 5 and 20 MB single line without spaces (Latin letters), a
//! 1 MB and a 5 MB single line of Chinese, 1, 5 and 50 MB of ordinary
//! paragraphs (mixed Chinese and English), and a Markdown file with one
//! 200,000-character heading over 400 KB of body.

use std::time::Duration;

use reportd::import::chunk::{self, ChunkSettings};
use reportd::import::parse::Format;
use reportd::import::{prepare, text};

const MB: usize = 1 << 20;

/// CPU time of this thread. The machines this runs on are shared, so wall
/// time mostly measures the neighbours; CPU time measures the work.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Deterministic pseudo-random numbers (xorshift), so every run times the same input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// A line of `bytes` bytes: random lowercase letters, no space.
fn latin_line(bytes: usize) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..bytes).map(|_| (b'a' + (rng.next() % 26) as u8) as char).collect()
}

/// A line of about `bytes` bytes of Chinese characters, without punctuation.
fn chinese_line(bytes: usize) -> String {
    const HAN: &str = "火星是太阳系八大行星之一质量体积仅比水星大表面布满氧化铁呈现橘红色地形有撞击坑峡谷沙丘和极冠";
    let han: Vec<char> = HAN.chars().collect();
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut s = String::with_capacity(bytes + 4);
    while s.len() < bytes {
        s.push(han[(rng.next() % han.len() as u64) as usize]);
    }
    s
}

/// About `bytes` bytes of paragraphs of sentences, Chinese and English.
fn paragraphs(bytes: usize) -> String {
    const ZH: &[&str] = &[
        "火星是太阳系中由内往外数的第四颗行星。",
        "它的质量、体积仅比水星大，是八大行星中第二小的行星！",
        "表面布满氧化铁，因此呈现橘红色；",
        "人们为什么一直关注它？",
        "探测器在那里发现了水冰存在的证据。",
    ];
    const EN: &[&str] = &[
        "Mars is the fourth planet from the Sun. ",
        "Its surface is covered in iron oxide dust, which gives it a reddish colour. ",
        "Why do we keep sending probes there? ",
        "Several missions have found evidence of water ice; more are planned. ",
        "The thin atmosphere is mostly carbon dioxide! ",
    ];
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut s = String::with_capacity(bytes + 2048);
    while s.len() < bytes {
        let sentences = 2 + rng.next() % 12;
        let pool = if rng.next().is_multiple_of(2) { ZH } else { EN };
        for _ in 0..sentences {
            s.push_str(rng.pick(pool));
        }
        s.push_str(if rng.next().is_multiple_of(4) { "\n" } else { "\n\n" });
    }
    s
}

/// One 200,000-character heading over about 400 KB of body.
fn huge_heading_markdown() -> String {
    format!("# {}\n\n{}", "题".repeat(200_000), paragraphs(400 * 1024))
}

struct Case {
    /// Cases of one kind are compared with the first of that kind.
    kind: &'static str,
    name: &'static str,
    format: Format,
    make: fn() -> String,
}

struct Timing {
    prepare: Duration,
    chunk: Duration,
    chunks: usize,
    stored: usize,
}

/// The best of `runs` runs of the whole import step, and of the chunking step alone.
fn time(case: &Case, input: &str, runs: usize) -> Timing {
    let settings = ChunkSettings::default();
    let mut best = Timing { prepare: Duration::MAX, chunk: Duration::MAX, chunks: 0, stored: 0 };
    for _ in 0..runs {
        let started = cpu_time();
        let prepared = prepare(case.format, input.as_bytes(), &settings, &mut |_| {}).expect("the input imports");
        best.prepare = best.prepare.min(cpu_time() - started);
        best.chunks = prepared.chunks.len();
        best.stored =
            prepared.chunks.iter().map(|c| c.content.len() + c.heading_path.len() + c.search_text.len()).sum();

        let doc = chunk::bound(match case.format {
            Format::Md => text::parse_markdown(input),
            _ => text::parse_plain(input),
        });
        let started = cpu_time();
        let chunks = chunk::chunk(&doc, &settings);
        best.chunk = best.chunk.min(cpu_time() - started);
        assert_eq!(chunks.len(), best.chunks);
    }
    best
}

fn per_mb(d: Duration, bytes: usize) -> f64 {
    d.as_secs_f64() * 1000.0 / (bytes as f64 / MB as f64)
}

fn main() {
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    // An argument picks the cases whose name contains it, e.g. `chinese`.
    let only = std::env::args().nth(1).unwrap_or_default();
    let cases = [
        Case { kind: "latin", name: "latin line 1 MB", format: Format::Txt, make: || latin_line(MB) },
        Case { kind: "latin", name: "latin line 5 MB", format: Format::Txt, make: || latin_line(5 * MB) },
        Case { kind: "latin", name: "latin line 20 MB", format: Format::Txt, make: || latin_line(20 * MB) },
        Case { kind: "chinese", name: "chinese line 1 MB", format: Format::Txt, make: || chinese_line(MB) },
        Case { kind: "chinese", name: "chinese line 5 MB", format: Format::Txt, make: || chinese_line(5 * MB) },
        Case { kind: "paragraphs", name: "paragraphs 1 MB", format: Format::Txt, make: || paragraphs(MB) },
        Case { kind: "paragraphs", name: "paragraphs 5 MB", format: Format::Txt, make: || paragraphs(5 * MB) },
        Case { kind: "paragraphs", name: "paragraphs 50 MB", format: Format::Txt, make: || paragraphs(50 * MB) },
        Case { kind: "md", name: "md 200k-char heading", format: Format::Md, make: huge_heading_markdown },
    ];
    println!(
        "{:<22} {:>9} {:>8} {:>13} {:>11} {:>13} {:>8}",
        "case", "input MB", "chunks", "import ms/MB", "chunk ms/MB", "vs first", "stored×"
    );
    let mut baseline: Option<(&str, f64)> = None;
    for case in cases.iter().filter(|c| c.name.contains(&only)) {
        let input = (case.make)();
        let t = time(case, &input, runs);
        let bytes = input.len();
        let import = per_mb(t.prepare, bytes);
        let ratio = match baseline {
            Some((kind, base)) if kind == case.kind => import / base,
            _ => {
                baseline = Some((case.kind, import));
                1.0
            }
        };
        println!(
            "{:<22} {:>9.2} {:>8} {:>13.1} {:>11.1} {:>13.2} {:>8.2}",
            case.name,
            bytes as f64 / MB as f64,
            t.chunks,
            import,
            per_mb(t.chunk, bytes),
            ratio,
            t.stored as f64 / bytes as f64
        );
    }
    println!(
        "\nimport = decode + parse + bound + chunk + search text (reportd::import::prepare); chunk = chunk::chunk alone;\n\
         stored× = bytes of content + heading_path + search_text over input bytes.\n\
         Times are CPU time of the thread, best of {runs} runs."
    );
}
