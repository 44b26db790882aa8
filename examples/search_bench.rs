//! Search latency benchmark (run by `bench/search.sh`).
//!
//! Generates a corpus of chunks in Chinese, English and both, stores it
//! through the library exactly as an import would
//! ([`reportd::search::index_text`], then [`Database::insert_document`]), and
//! times [`SearchIndex::search`] (query segmentation, the SQL query and the
//! snippets) for Chinese and English queries. It prints the p50 and p99
//! latency per query and per language.
//!
//! The text is drawn with a fixed seed from word lists with realistic
//! frequencies, because latency depends mostly on how many chunks contain
//! the query's words: Chinese words come from jieba's own dictionary
//! (`--zh-dict`, its `dict.txt`: word, frequency, tag), drawn in proportion
//! to their frequency; English words are a list of report vocabulary
//! followed by made-up words, drawn with Zipf's law. A few words (发展,
//! "development") are in most chunks, as in real reports; most are rare.
//!
//! Usage: `search_bench --zh-dict PATH [--chunks N] [--iterations N] [--limit N] [--database-url URL]`
//! (by default 10,000 chunks, 300 timed runs per query, limit 10, and a
//! temporary SQLite file).

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reportd::db::{Database, Document, NewChunk};
use reportd::ids::{DocumentId, UserId};
use reportd::search::{SearchIndex, index_text, query, query_tokens};

/// Chunks per generated document.
const CHUNKS_PER_DOCUMENT: usize = 100;

/// Function words placed between the content words, as in real sentences.
const ZH_GLUE: &[&str] = &["的", "和", "在", "是", "对", "与", "了", "中", "将", "为"];

/// Report vocabulary, most frequent first; made-up words follow it.
const EN_WORDS: &[&str] = &[
    "development",
    "economy",
    "data",
    "technology",
    "company",
    "market",
    "management",
    "system",
    "research",
    "policy",
    "analysis",
    "service",
    "information",
    "innovation",
    "problem",
    "construction",
    "society",
    "international",
    "platform",
    "improve",
    "impact",
    "environment",
    "education",
    "energy",
    "city",
    "structure",
    "method",
    "result",
    "goal",
    "project",
    "plan",
    "strategy",
    "resource",
    "quality",
    "efficiency",
    "cost",
    "risk",
    "assessment",
    "indicator",
    "report",
    "security",
    "network",
    "cooperation",
    "investment",
    "trade",
    "finance",
    "health",
    "medical",
    "transport",
    "rural",
    "population",
    "climate",
    "change",
    "artificial",
    "intelligence",
    "machine",
    "learning",
    "model",
    "algorithm",
    "product",
    "user",
    "demand",
    "institution",
    "reform",
    "law",
    "culture",
    "history",
    "science",
    "experiment",
    "trend",
    "growth",
    "decline",
    "reduce",
    "promote",
    "strengthen",
    "achieve",
    "provide",
    "support",
    "beijing",
    "shanghai",
    "university",
    "student",
    "teacher",
    "course",
    "mars",
    "moon",
    "satellite",
    "spaceflight",
    "exploration",
    "universe",
    "astronomy",
    "physics",
    "chemistry",
    "biology",
    "material",
    "engineering",
    "manufacturing",
    "industry",
    "agriculture",
    "water",
    "pollution",
    "governance",
    "carbon",
    "emission",
    "renewable",
    "electric",
    "vehicle",
    "battery",
    "chip",
    "semiconductor",
    "software",
    "hardware",
    "cloud",
    "computing",
    "blockchain",
    "internet",
    "phone",
    "communication",
    "digital",
    "automation",
    "robot",
    "sensor",
    "survey",
    "questionnaire",
    "sample",
    "statistics",
    "forecast",
    "optimization",
    "design",
    "testing",
    "deployment",
    "operation",
    "maintenance",
    "customer",
    "consumer",
    "price",
    "income",
    "spending",
    "budget",
    "tax",
    "employment",
    "wage",
    "housing",
    "pension",
    "insurance",
    "bank",
    "stock",
    "bond",
    "currency",
    "inflation",
    "interest",
    "exchange",
    "export",
    "import",
    "supply",
    "chain",
    "logistics",
    "retail",
    "tourism",
    "sport",
    "art",
    "music",
    "film",
    "news",
    "media",
    "publishing",
    "library",
    "museum",
    "hospital",
    "doctor",
    "disease",
    "vaccine",
    "drug",
    "nutrition",
    "food",
    "diet",
    "forest",
    "ocean",
    "wetland",
    "ecology",
    "protection",
    "species",
    "earthquake",
    "typhoon",
    "flood",
    "drought",
    "disaster",
    "emergency",
    "rescue",
    "volunteer",
    "community",
    "street",
    "park",
    "subway",
    "railway",
    "airport",
    "harbour",
];

const EN_GLUE: &[&str] = &["the", "of", "and", "to", "in", "for", "is", "on", "with", "a"];

/// The timed queries: common and rare words, several words, and whole
/// questions with function words, as the AI assistants would send them.
const ZH_QUERIES: &[&str] = &[
    "发展",
    "经济 政策",
    "火星",
    "北京大学",
    "人工智能 模型",
    "通货膨胀对利率的影响",
    "如何提高数据分析的效率",
    "地震灾害应急救援志愿者",
];
const EN_QUERIES: &[&str] = &[
    "development",
    "mars",
    "Machine Learning",
    "carbon emission policy",
    "impact of inflation on interest",
    "how to improve the efficiency of data analysis",
    "earthquake disaster emergency rescue volunteer",
    "BLOCKCHAIN",
];

/// How many made-up English words follow [`EN_WORDS`].
const EN_MADE_UP: usize = 30_000;

/// How many of the dictionary's most frequent words of two to four Chinese
/// characters are used.
const ZH_VOCABULARY: usize = 50_000;

struct Args {
    chunks: usize,
    iterations: usize,
    limit: usize,
    database_url: Option<String>,
    zh_dict: Option<String>,
}

fn parse_args() -> Args {
    let mut args = Args { chunks: 10_000, iterations: 300, limit: 10, database_url: None, zh_dict: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--chunks" => args.chunks = value.parse().expect("--chunks N"),
            "--iterations" => args.iterations = value.parse().expect("--iterations N"),
            "--limit" => args.limit = value.parse().expect("--limit N"),
            "--database-url" => args.database_url = Some(value),
            "--zh-dict" => args.zh_dict = Some(value),
            other => panic!("unknown option {other}"),
        }
    }
    args
}

/// Words with the cumulative sum of their weights, to draw from.
struct Vocabulary {
    words: Vec<String>,
    cumulative: Vec<f64>,
}

impl Vocabulary {
    fn new(weighted: Vec<(String, f64)>) -> Self {
        let mut total = 0.0;
        let mut words = Vec::with_capacity(weighted.len());
        let mut cumulative = Vec::with_capacity(weighted.len());
        for (word, weight) in weighted {
            total += weight;
            words.push(word);
            cumulative.push(total);
        }
        Self { words, cumulative }
    }

    fn draw(&self, rng: &mut StdRng) -> &str {
        let x = rng.random::<f64>() * self.cumulative.last().copied().unwrap_or(0.0);
        let i = self.cumulative.partition_point(|&c| c <= x).min(self.words.len() - 1);
        &self.words[i]
    }

    /// How many words make up the given share of all draws.
    fn words_for_share(&self, share: f64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        self.cumulative.partition_point(|&c| c < total * share) + 1
    }
}

/// The most frequent words of jieba's dictionary with two to four Chinese
/// characters, weighted by their frequency.
fn chinese_vocabulary(path: &str) -> anyhow::Result<Vocabulary> {
    let text = std::fs::read_to_string(path)?;
    let mut words: Vec<(String, f64)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let word = parts.next()?;
            let freq: f64 = parts.next()?.parse().ok()?;
            let chars = word.chars().count();
            let chinese = word.chars().all(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
            (chinese && (2..=4).contains(&chars)).then(|| (word.to_owned(), freq))
        })
        .collect();
    words.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    words.truncate(ZH_VOCABULARY);
    anyhow::ensure!(words.len() > 1000, "{path} does not look like jieba's dict.txt");
    Ok(Vocabulary::new(words))
}

/// [`EN_WORDS`] then made-up words, weighted by Zipf's law (1 / (rank + 2.7)).
fn english_vocabulary(rng: &mut StdRng) -> Vocabulary {
    const SYLLABLES: &[&str] = &[
        "ba", "ce", "di", "fo", "gu", "ka", "le", "mi", "no", "pu", "ra", "se", "ti", "vo", "zu", "bran", "clo", "dre",
        "fli", "gro", "pla", "stri", "tor", "ven", "mar", "lin", "dus", "pel", "quo", "xim",
    ];
    let mut words: Vec<String> = EN_WORDS.iter().map(|w| w.to_string()).collect();
    let mut seen: std::collections::HashSet<String> = words.iter().cloned().collect();
    while words.len() < EN_WORDS.len() + EN_MADE_UP {
        let n = rng.random_range(2..5);
        let word: String = (0..n).map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())]).collect();
        if seen.insert(word.clone()) {
            words.push(word);
        }
    }
    Vocabulary::new(words.into_iter().enumerate().map(|(rank, w)| (w, 1.0 / (rank as f64 + 2.7))).collect())
}

fn chinese_sentence(rng: &mut StdRng, zh: &Vocabulary) -> String {
    let mut s = String::new();
    for _ in 0..rng.random_range(6..16) {
        s.push_str(zh.draw(rng));
        if rng.random_bool(0.35) {
            s.push_str(ZH_GLUE[rng.random_range(0..ZH_GLUE.len())]);
        }
    }
    s.push_str(if rng.random_bool(0.8) { "。" } else { "，" });
    s
}

fn english_sentence(rng: &mut StdRng, en: &Vocabulary) -> String {
    let mut words: Vec<&str> = Vec::new();
    for _ in 0..rng.random_range(8..20) {
        if rng.random_bool(0.4) {
            words.push(EN_GLUE[rng.random_range(0..EN_GLUE.len())]);
        }
        words.push(en.draw(rng));
    }
    let s = words.join(" ");
    let mut chars = s.chars();
    let first = chars.next().map(|c| c.to_uppercase().collect::<String>()).unwrap_or_default();
    format!("{first}{}. ", chars.as_str())
}

/// One chunk of about 500–1,000 characters: Chinese (half of them), English
/// (a third) or alternating sentences of both.
fn chunk_text(rng: &mut StdRng, zh: &Vocabulary, en: &Vocabulary) -> String {
    let kind: f64 = rng.random();
    let target = rng.random_range(500..1000);
    let mut s = String::new();
    while s.chars().count() < target {
        let chinese = if kind < 0.5 {
            true
        } else if kind < 0.83 {
            false
        } else {
            rng.random_bool(0.5)
        };
        s.push_str(&if chinese { chinese_sentence(rng, zh) } else { english_sentence(rng, en) });
    }
    s
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// How many of the user's chunks match `q` (the candidates the database ranks
/// before it keeps `limit`).
async fn matching(db: &Database, index: SearchIndex, user: &UserId, q: &str) -> i64 {
    let tokens = query_tokens(q);
    let count = match index {
        SearchIndex::Sqlite => {
            let Some(expr) = query::fts5_match(user, &tokens) else { return 0 };
            sqlx::query_scalar("SELECT COUNT(*) FROM chunks_fts WHERE chunks_fts MATCH $1").bind(expr)
        }
        SearchIndex::Postgres => {
            let Some(expr) = query::pg_tsquery(&tokens) else { return 0 };
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM chunks WHERE search_tsv @@ to_tsquery('simple', $1) AND user_id = $2",
            )
            .bind(expr)
            .bind(user.as_str())
        }
    };
    count.fetch_one(db.pool()).await.expect("count")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args();
    let dir = tempfile::TempDir::new()?;
    let url = args.database_url.clone().unwrap_or_else(|| format!("sqlite://{}/bench.db", dir.path().display()));
    let db = Database::connect(&url).await?;
    let index = SearchIndex::for_database(&db);
    let user = UserId::generate();
    db.create_user(&user, &format!("bench-{user}"), "x", false).await?;

    // Generate and segment, as an import's parse worker would.
    let zh_dict = args.zh_dict.as_deref().ok_or_else(|| {
        anyhow::anyhow!("--zh-dict PATH is required: jieba-rs's src/data/dict.txt (bench/search.sh finds it)")
    })?;
    let zh = chinese_vocabulary(zh_dict)?;
    let mut rng = StdRng::seed_from_u64(20_240_601);
    let en = english_vocabulary(&mut rng);
    let started = Instant::now();
    reportd::search::warm_up();
    let dictionary = started.elapsed();
    let texts: Vec<(String, String)> = (0..args.chunks)
        .map(|i| {
            let heading = format!("第{}章 > {}", i / CHUNKS_PER_DOCUMENT + 1, zh.draw(&mut rng));
            (heading, chunk_text(&mut rng, &zh, &en))
        })
        .collect();
    let chars: usize = texts.iter().map(|(_, c)| c.chars().count()).sum();
    let started = Instant::now();
    let chunks: Vec<NewChunk> = texts
        .into_iter()
        .map(|(heading_path, content)| NewChunk {
            search_text: index_text(&heading_path, &content),
            heading_path,
            content,
        })
        .collect();
    let segmenting = started.elapsed();

    let started = Instant::now();
    for (n, batch) in chunks.chunks(CHUNKS_PER_DOCUMENT).enumerate() {
        let doc = Document {
            id: DocumentId::generate().to_string(),
            user_id: user.to_string(),
            title: format!("报告 {n}"),
            filename: format!("report-{n}.md"),
            format: "md".into(),
            size_bytes: batch.iter().map(|c| c.content.len() as i64).sum(),
            chunk_count: batch.len() as i64,
            created_at: n as i64,
        };
        db.insert_document(&doc, batch, &mut |_| {}).await?;
    }
    let storing = started.elapsed();

    println!("backend: {index:?} ({})", if args.database_url.is_some() { "given URL" } else { "temporary file" });
    println!(
        "corpus: {} chunks in {} documents, {:.1} M characters (avg {} per chunk)",
        args.chunks,
        args.chunks.div_ceil(CHUNKS_PER_DOCUMENT),
        chars as f64 / 1e6,
        chars / args.chunks.max(1)
    );
    println!(
        "vocabulary: {} Chinese words (half of all draws from the top {}), {} English words (half from the top {})",
        zh.words.len(),
        zh.words_for_share(0.5),
        en.words.len(),
        en.words_for_share(0.5)
    );
    println!(
        "indexing: dictionary load {:.0} ms; jieba segmentation {:.2} s ({:.0} chunks/s, one core); insert with index triggers {:.2} s",
        dictionary.as_secs_f64() * 1000.0,
        segmenting.as_secs_f64(),
        args.chunks as f64 / segmenting.as_secs_f64(),
        storing.as_secs_f64()
    );
    println!(
        "search: limit {}, {} timed runs per query after 20 warm-up runs, one client\n",
        args.limit, args.iterations
    );
    println!("{:<50} {:>8} {:>8} {:>8} {:>8}", "query", "matches", "p50 ms", "p99 ms", "max ms");

    for (lang, queries) in [("Chinese", ZH_QUERIES), ("English", EN_QUERIES)] {
        let mut all = Vec::new();
        for q in queries {
            for _ in 0..20 {
                index.search(&db, &user, q, None, args.limit).await?;
            }
            let mut times = Vec::with_capacity(args.iterations);
            let mut returned = 0;
            for _ in 0..args.iterations {
                let t = Instant::now();
                let hits = index.search(&db, &user, q, None, args.limit).await?;
                times.push(t.elapsed());
                returned = hits.len();
            }
            if returned == 0 {
                println!("note: {q:?} found nothing in this corpus");
            }
            times.sort_unstable();
            println!(
                "{:<50} {:>8} {:>8.2} {:>8.2} {:>8.2}",
                q,
                matching(&db, index, &user, q).await,
                percentile(&times, 0.5),
                percentile(&times, 0.99),
                percentile(&times, 1.0)
            );
            all.extend(times);
        }
        all.sort_unstable();
        println!(
            "{:<50} {:>8} {:>8.2} {:>8.2} {:>8.2}\n",
            format!("ALL {lang} ({} searches)", all.len()),
            "",
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            percentile(&all, 1.0)
        );
    }
    // The document filter: the same kind of queries within five documents.
    let ids: Vec<DocumentId> = sqlx::query_scalar::<_, String>("SELECT id FROM documents ORDER BY created_at LIMIT 5")
        .fetch_all(db.pool())
        .await?
        .iter()
        .map(|id| DocumentId::parse(id).expect("stored ids are valid"))
        .collect();
    let mut all = Vec::new();
    for q in ["发展", "人工智能 模型", "development", "machine learning"] {
        let mut times = Vec::with_capacity(args.iterations);
        for i in 0..args.iterations + 20 {
            let t = Instant::now();
            index.search(&db, &user, q, Some(&ids), args.limit).await?;
            if i >= 20 {
                times.push(t.elapsed());
            }
        }
        times.sort_unstable();
        println!(
            "{:<50} {:>8} {:>8.2} {:>8.2} {:>8.2}",
            format!("{q} (in 5 documents)"),
            "",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            percentile(&times, 1.0)
        );
        all.extend(times);
    }
    all.sort_unstable();
    println!(
        "{:<50} {:>8} {:>8.2} {:>8.2} {:>8.2}",
        format!("ALL with document_ids ({} searches)", all.len()),
        "",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        percentile(&all, 1.0)
    );
    db.close().await;
    Ok(())
}
