//! Property tests over hostile inputs at the edges (issue #7): random
//! multipart bodies, bearer tokens, path ids and JSON bodies, thrown at a
//! running service with Redis on. Whatever arrives, the service answers no
//! 5xx, every 4xx is a `{"detail","code"}` JSON body, `/healthz` still
//! answers after each case, and no Redis key is written outside the prefix
//! or without a TTL.
//!
//! Also the service's own JSON answers to an over-long URI (414) and an
//! over-large header block (431), and what hyper answers itself (without a
//! body) beyond the limits the service can see.
//!
//! Cases are bounded (96–128 a property) and nothing is persisted, so that
//! CI runs the same amount of work every time.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

use crate::helpers::{Client, JWT_SECRET, TestApp, TestRedis};

/// The key prefix of a test app (`REDIS_PREFIX` and `APP_ENV=test`).
const PREFIX: &str = "langextract:test:";
/// The one key that lives without a TTL: the run-time flag overrides.
const FLAGS_KEY: &str = "langextract:test:flags";

/// Bounded cases, no persistence files, and a bounded shrink: a failure
/// still shrinks to a small input, without running for minutes.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, max_shrink_iters: 200, ..ProptestConfig::default() }
}

/// One service with its own Redis, and the runtime that drives both while
/// proptest calls the cases synchronously. Fields drop in order: the app
/// is told to stop before Redis and the runtime go.
struct Hostile {
    app: TestApp,
    redis: TestRedis,
    rt: tokio::runtime::Runtime,
    /// How often each status was answered, printed at the end: a property
    /// whose cases all end in one status explores little.
    statuses: std::sync::Mutex<BTreeMap<u16, u32>>,
}

impl Hostile {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let redis = rt.block_on(TestRedis::start());
        let app = rt.block_on(TestApp::spawn(|s| s.with_redis(&redis)));
        Self { app, redis, rt, statuses: Default::default() }
    }

    /// [`checked`], counting the status.
    async fn checked(&self, r: reqwest::Response, what: &str) -> (u16, Value) {
        let (status, body) = checked(r, what).await;
        *self.statuses.lock().unwrap().entry(status).or_default() += 1;
        (status, body)
    }

    fn client(&self) -> &Client {
        &self.app.client
    }

    /// Runs `case` on `cases` values of `strategy`; after each, the service
    /// must still answer `/healthz`.
    fn check<S>(&self, cases: u32, strategy: S, case: impl AsyncFn(S::Value))
    where
        S: Strategy,
    {
        let mut runner = TestRunner::new(config(cases));
        let result = runner.run(&strategy, |value| {
            self.rt.block_on(async {
                case(value).await;
                let c = self.client();
                let r = c.http.get(c.url("/healthz")).send().await.expect("the service is alive");
                assert_eq!(r.status(), 200, "the service still answers /healthz");
            });
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        eprintln!("{cases} cases answered {:?}", self.statuses.lock().unwrap());
    }

    /// Every key in Redis is under the prefix and expires (the flags hash
    /// excepted). Returns how many keys there are.
    fn assert_keys_are_bounded(&self) -> usize {
        let keys = self.rt.block_on(self.redis.keys_with_ttl());
        for (key, ttl) in &keys {
            assert!(key.starts_with(PREFIX), "key {key:?} is outside the prefix {PREFIX:?}");
            if key != FLAGS_KEY {
                assert!(*ttl > 0, "key {key:?} has no TTL ({ttl})");
            }
        }
        keys.len()
    }
}

/// The answer to a hostile request: never a 5xx, and a 4xx is
/// `{"detail": string, "code": string}` served as `application/json`.
/// Returns the status and the JSON body (`Null` for other bodies; an event
/// stream is not read).
async fn checked(r: reqwest::Response, what: &str) -> (u16, Value) {
    let status = r.status().as_u16();
    let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(r.headers().get("x-content-type-options").map(|v| v.as_bytes()), Some(&b"nosniff"[..]), "{what}");
    if content_type.starts_with("text/event-stream") {
        assert!(status < 300, "{what}: an event stream with {status}");
        return (status, Value::Null);
    }
    let bytes = r.bytes().await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned();
    assert!(status < 500, "{what}: answered {status}: {text}");
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status >= 400 {
        assert!(content_type.starts_with("application/json"), "{what}: {status} as {content_type:?}: {text}");
        assert!(body["detail"].is_string() && body["code"].is_string(), "{what}: {status} with {text}");
    }
    (status, body)
}

/// Bytes that can travel in a header value (HTTP field-content): others
/// are replaced, since a client library cannot send them at all.
fn header_safe(bytes: Vec<u8>) -> Vec<u8> {
    bytes.into_iter().map(|b| if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 { b } else { b'?' }).collect()
}

/// Every byte but the unreserved ones, percent-encoded.
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn is_valid_id(s: &[u8]) -> bool {
    !s.is_empty() && s.len() <= 64 && s.iter().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(b))
}

// ---------------------------------------------------------------- multipart

#[derive(Debug, Clone)]
struct Part {
    name: Option<String>,
    filename: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

/// How the request announces its body.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Proper,
    QuotedBoundary,
    WrongBoundary,
    NoBoundary,
    TextPlain,
    Missing,
}

#[derive(Debug, Clone)]
struct Upload {
    boundary: String,
    parts: Vec<Part>,
    closed: bool,
    framing: Framing,
    /// Where the body is cut short, if it is.
    cut: Option<Index>,
    /// Random bytes sent instead of any multipart body.
    raw: Option<Vec<u8>>,
}

impl Upload {
    fn content_type(&self) -> Option<String> {
        let b = &self.boundary;
        match self.framing {
            Framing::Proper => Some(format!("multipart/form-data; boundary={b}")),
            Framing::QuotedBoundary => Some(format!("multipart/form-data; boundary=\"{b}\"")),
            Framing::WrongBoundary => Some(format!("multipart/form-data; boundary={b}X")),
            Framing::NoBoundary => Some("multipart/form-data".into()),
            Framing::TextPlain => Some("text/plain".into()),
            Framing::Missing => None,
        }
    }

    fn body(&self) -> Vec<u8> {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let mut out = Vec::new();
        for p in &self.parts {
            out.extend_from_slice(format!("--{}\r\nContent-Disposition: form-data", self.boundary).as_bytes());
            if let Some(name) = &p.name {
                out.extend_from_slice(format!("; name=\"{name}\"").as_bytes());
            }
            if let Some(filename) = &p.filename {
                out.extend_from_slice(format!("; filename=\"{filename}\"").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            if let Some(ct) = &p.content_type {
                out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&p.data);
            out.extend_from_slice(b"\r\n");
        }
        if self.closed {
            out.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        }
        if let Some(cut) = &self.cut {
            out.truncate(cut.index(out.len() + 1));
        }
        out
    }

    /// Two well-formed `file` parts in a whole, properly framed body: the
    /// upload is ambiguous and must be refused.
    fn has_two_clean_files(&self) -> bool {
        let clean = |p: &&Part| {
            p.name.as_deref() == Some("file")
                && p.filename.as_deref().is_none_or(|f| !f.contains(['"', '\r', '\n', '\\']))
                && p.content_type.as_deref().is_none_or(|c| !c.contains(['\r', '\n']))
        };
        self.raw.is_none()
            && self.cut.is_none()
            && matches!(self.framing, Framing::Proper)
            && self.parts.iter().filter(clean).count() >= 2
    }
}

fn part() -> impl Strategy<Value = Part> {
    let name = prop_oneof![
        12 => Just(Some("file".to_owned())),
        3 => Just(Some("title".to_owned())),
        1 => Just(None),
        1 => "[a-z\"; =\\\\\r\n]{0,12}".prop_map(Some),
        1 => any::<String>().prop_map(Some),
    ];
    let filename = prop_oneof![
        16 => "[a-z]{1,8}\\.(txt|md|html)".prop_map(Some),
        1 => "[a-z]{1,8}(\\.docx|\\.pdf|\\.exe|\\.TXT|\\.tar\\.gz|)".prop_map(Some),
        1 => Just(None),
        1 => any::<String>().prop_map(Some),
        2 => "(\\.\\./|/etc/|C:\\\\|[\\x00-\\x1f]|\u{202e}|名字|\u{feff}|%2e%2e/){1,6}[a-z]{0,5}(\\.txt|\\.md)?"
            .prop_map(Some),
        1 => "[a-z]{250,400}\\.txt".prop_map(Some),
    ];
    let content_type = prop::option::weighted(
        0.3,
        prop_oneof![
            2 => Just("text/plain".to_owned()),
            2 => Just("application/octet-stream".to_owned()),
            1 => "[ -~]{0,40}",
        ],
    );
    let data = prop_oneof![
        3 => "[\\PC\\s]{0,300}".prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..1024),
        1 => Just(crate::helpers::sample_text()),
        1 => Just(Vec::new()),
    ];
    (name, filename, content_type, data).prop_map(|(name, filename, content_type, data)| Part {
        name,
        filename,
        content_type,
        data,
    })
}

fn upload() -> impl Strategy<Value = Upload> {
    let framing = prop_oneof![
        20 => Just(Framing::Proper),
        1 => Just(Framing::QuotedBoundary),
        1 => Just(Framing::WrongBoundary),
        1 => Just(Framing::NoBoundary),
        1 => Just(Framing::TextPlain),
        1 => Just(Framing::Missing),
    ];
    let boundary = prop_oneof![
        10 => "[A-Za-z0-9_-]{1,70}",
        1 => "[A-Za-z0-9'()+_,./:=?-]{1,70}",
        1 => "[A-Za-z0-9]{71,200}",
    ];
    (
        boundary,
        prop::collection::vec(part(), 0..4),
        prop::bool::weighted(0.95),
        framing,
        prop::option::weighted(0.1, any::<Index>()),
        prop::option::weighted(0.05, prop::collection::vec(any::<u8>(), 0..2048)),
    )
        .prop_map(|(boundary, parts, closed, framing, cut, raw)| Upload {
            boundary,
            parts,
            closed,
            framing,
            cut,
            raw,
        })
}

/// Random multipart bodies to `POST /Import_Doc/`: malformed ones get a
/// JSON 4xx; one that is accepted (202) can be polled.
#[test]
fn hostile_multipart_uploads_get_json_errors_or_a_pollable_task() {
    let h = Hostile::start();
    let c = h.client();
    let token = h.rt.block_on(c.user("prop-uploader"));
    let accepted = std::cell::Cell::new(0u32);
    h.check(128, upload(), async |u: Upload| {
        let mut request = c.http.post(c.url("/Import_Doc/")).bearer_auth(&token).body(u.body());
        if let Some(ct) = u.content_type() {
            request = request.header("content-type", ct);
        }
        let r = request.send().await.expect("the upload is answered");
        let (status, body) = h.checked(r, &format!("upload {u:?}")).await;
        if u.has_two_clean_files() {
            assert!((400..500).contains(&status), "two file parts answered {status}: {body}");
        }
        if status == 202 {
            accepted.set(accepted.get() + 1);
            assert!(u.parts.iter().any(|p| p.name.as_deref() == Some("file")), "accepted without a file: {u:?}");
            let task = body["task_id"].as_str().expect("a task id").to_owned();
            let (code, polled) = c.status(&token, &task).await;
            assert_eq!(code, 200, "{polled}");
            assert_eq!(polled["task_id"], task.as_str());
        }
    });
    eprintln!("multipart: {} of 128 uploads accepted", accepted.get());
    // One plain import, so that the key check below sees written keys.
    let task = h.rt.block_on(c.import(&token, "plain.txt", crate::helpers::sample_text()));
    h.rt.block_on(c.wait_done(&token, &task));
    assert!(h.assert_keys_are_bounded() > 0, "the imports wrote their task status to Redis");
}

// ------------------------------------------------------------------- tokens

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A JWS signed with the service's own secret, over any header and claims.
fn signed(header: &Value, claims: &Value, alg: jsonwebtoken::Algorithm) -> String {
    let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).unwrap();
    format!("{message}.{signature}")
}

/// A change to a valid token that must make it invalid.
#[derive(Debug, Clone)]
enum Mutation {
    /// `=` padding after a part.
    Pad(usize),
    /// The standard alphabet's `+`/`/` in place of `-`/`_`.
    Alphabet(usize),
    /// The unused low bits of a part's last character set: the same bytes,
    /// spelled differently.
    StrayBits(usize),
    /// The last `n` characters removed.
    Truncate(usize),
    /// A character inserted inside the token.
    Insert(Index, char),
    /// The header and the claims swapped.
    Swap,
    /// A fourth part.
    Extra,
}

fn mutate(token: &str, m: &Mutation) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    match m {
        Mutation::Pad(p) => parts[p % 3].push('='),
        Mutation::Alphabet(p) => {
            let part = &mut parts[p % 3];
            *part = if part.contains('-') {
                part.replacen('-', "+", 1)
            } else if part.contains('_') {
                part.replacen('_', "/", 1)
            } else {
                format!("{part}+")
            };
        }
        Mutation::StrayBits(p) => {
            let part = &mut parts[p % 3];
            let last = part.pop().unwrap();
            let v = ALPHABET.iter().position(|&c| c == last as u8).unwrap();
            // The lowest bit of a last character that holds fewer than six
            // data bits is unused; otherwise flipping it changes the data.
            part.push(ALPHABET[v ^ 1] as char);
        }
        Mutation::Truncate(n) => {
            let mut t = token.to_owned();
            t.truncate(token.len().saturating_sub((*n).max(1)));
            return t;
        }
        Mutation::Insert(at, c) => {
            // Inside the token: a space at either end would be trimmed away.
            let at = 1 + at.index(token.len() - 1);
            let mut t = token.to_owned();
            t.insert(at, *c);
            return t;
        }
        Mutation::Swap => parts.swap(0, 1),
        Mutation::Extra => parts.push(parts[2].clone()),
    }
    parts.join(".")
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..3usize).prop_map(Mutation::Pad),
        (0..3usize).prop_map(Mutation::Alphabet),
        (0..3usize).prop_map(Mutation::StrayBits),
        (1..60usize).prop_map(Mutation::Truncate),
        (any::<Index>(), select(vec!['é', ' ', '.', '\t', '=', '!', '*', '+', '/', '中']))
            .prop_map(|(i, c)| Mutation::Insert(i, c)),
        Just(Mutation::Swap),
        Just(Mutation::Extra),
    ]
}

/// A defect in the header or claims of a token signed with the right key.
fn defective_signed(user: String) -> impl Strategy<Value = String> {
    let later = now() + 3600;
    let u = user.clone();
    let crit = "[a-z]{0,8}".prop_map(move |ext| {
        signed(&json!({"alg": "HS256", "typ": "JWT", "crit": [ext]}), &json!({"sub": u, "exp": later}), HS256)
    });
    let u = user.clone();
    let expired = (1i64..1_000_000_000)
        .prop_map(move |ago| signed(&json!({"alg": "HS256"}), &json!({"sub": u, "exp": now() - ago}), HS256));
    let u = user.clone();
    let not_yet = (60i64..1_000_000_000).prop_map(move |ahead| {
        signed(&json!({"alg": "HS256"}), &json!({"sub": u, "exp": later, "nbf": now() + ahead}), HS256)
    });
    let u = user.clone();
    let other_alg = Just(()).prop_map(move |()| {
        signed(&json!({"alg": "HS384"}), &json!({"sub": u, "exp": later}), jsonwebtoken::Algorithm::HS384)
    });
    let u = user.clone();
    let no_exp = Just(()).prop_map(move |()| signed(&json!({"alg": "HS256"}), &json!({"sub": u}), HS256));
    let no_sub = Just(()).prop_map(move |()| signed(&json!({"alg": "HS256"}), &json!({"exp": later}), HS256));
    let nobody = prop_oneof!["[A-Za-z0-9_-]{1,64}", any::<String>(), Just(String::new())]
        .prop_filter("not the real user", move |sub| *sub != user)
        .prop_map(move |sub| signed(&json!({"alg": "HS256"}), &json!({"sub": sub, "exp": later}), HS256));
    let odd_exp = prop_oneof![Just(json!("soon")), Just(json!(1e300)), Just(json!(-1)), Just(json!(null))]
        .prop_map(|exp| signed(&json!({"alg": "HS256"}), &json!({"sub": "x", "exp": exp}), HS256));
    prop_oneof![crit, expired, not_yet, other_alg, no_exp, no_sub, nobody, odd_exp]
}

const HS256: jsonwebtoken::Algorithm = jsonwebtoken::Algorithm::HS256;

/// `Authorization` header values, each with what it is.
fn authorization(token: String, user: String) -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    let bearer = |t: String| format!("Bearer {t}").into_bytes();
    let valid = token.clone();
    let mutated = mutation().prop_map(move |m| ("mutated", bearer(mutate(&valid, &m))));
    let signed = defective_signed(user).prop_map(move |t| ("signed with a defect", bearer(t)));
    let random = prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| {
        let mut v = b"Bearer ".to_vec();
        v.extend(b);
        ("random bytes", v)
    });
    let headers = select(vec![
        json!({"alg": "none"}),
        json!({"alg": "none", "typ": "JWT"}),
        json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
        json!({"alg": "RS256", "kid": "../../dev/null"}),
        json!({"alg": "HS256", "jku": "http://127.0.0.1:1/"}),
        json!(["HS256"]),
        json!("HS256"),
    ]);
    let forged = (
        headers,
        prop_oneof![Just(json!({"sub": "x", "exp": now() + 3600})), any::<String>().prop_map(Value::from)],
        prop::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
        .prop_map(|(header, claims, signature, pad)| {
            let pad = if pad { "==" } else { "" };
            let t = format!(
                "{}{pad}.{}{pad}.{}{pad}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes()),
                b64(&signature)
            );
            ("forged", format!("Bearer {t}").into_bytes())
        });
    let valid = token.clone();
    let huge = (8192usize..24_000, any::<bool>()).prop_map(move |(n, dots)| {
        let filler = if dots { ".".repeat(n) } else { format!("{valid}{}", "A".repeat(n)) };
        ("huge", format!("Bearer {filler}").into_bytes())
    });
    let valid = token;
    let schemes = select(vec!["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token ", "Bearer null", "Bearer\t"])
        .prop_map(move |scheme| {
            let v = match scheme {
                "Token " | "Bearer\t" => format!("{scheme}{valid}"),
                other => other.to_owned(),
            };
            ("scheme", v.into_bytes())
        });
    prop_oneof![4 => mutated, 3 => signed, 2 => random, 2 => forged, 1 => huge, 1 => schemes]
        .prop_map(|(what, value)| (what, header_safe(value)))
}

/// Random and forged tokens on `GET /documents`: always a JSON 401 with
/// `WWW-Authenticate: Bearer`, never a 200 (the real token, unchanged,
/// gets one).
#[test]
fn hostile_tokens_get_a_json_401() {
    let h = Hostile::start();
    let c = h.client();
    let token = h.rt.block_on(c.user("prop-token"));
    let user = h.rt.block_on(c.json(&token, "/auth/me"))["id"].as_str().unwrap().to_owned();
    assert_eq!(h.rt.block_on(c.get(&token, "/documents")).status(), 200, "the unchanged token works");
    h.check(128, authorization(token.clone(), user), async |(what, value): (&str, Vec<u8>)| {
        let header = reqwest::header::HeaderValue::from_bytes(&value).expect("a header-safe value");
        let r = c.http.get(c.url("/documents")).header("authorization", header).send().await.unwrap();
        let www = r.headers().get("www-authenticate").map(|v| v.as_bytes().to_vec());
        let shown = String::from_utf8_lossy(&value[..value.len().min(200)]).into_owned();
        let (status, _) = h.checked(r, &format!("{what} token {shown}")).await;
        assert_eq!(status, 401, "{what} token {shown}");
        assert!(www.is_some_and(|w| w.starts_with(b"Bearer")), "{what}: a 401 says WWW-Authenticate: Bearer");
    });
    h.assert_keys_are_bounded();
}

// ---------------------------------------------------------------------- ids

fn hostile_id() -> impl Strategy<Value = Vec<u8>> {
    let specials = vec![
        "..",
        ".",
        "*",
        ":",
        "{",
        "}",
        "{id}",
        "\0",
        "%",
        "%00",
        "/",
        "\\",
        "?",
        "#",
        " ",
        "\u{202e}",
        "../../etc/passwd",
        "' OR 1=1 --",
        "🙂",
        "\r\n",
        "ｔａｓｋ",
        "-",
        "_",
    ];
    prop_oneof![
        3 => "[A-Za-z0-9_-]{1,64}".prop_map(String::into_bytes),
        1 => "[A-Za-z0-9_-]{65,300}".prop_map(String::into_bytes),
        2 => ("[a-z0-9]{0,4}", select(specials), "[a-z0-9]{0,4}").prop_map(|(a, s, b)| format!("{a}{s}{b}").into_bytes()),
        2 => any::<String>().prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (2000usize..4000).prop_map(|n| "é".repeat(n).into_bytes()),
    ]
}

/// Random ids, percent-encoded, in every path that carries one: a JSON
/// 4xx (404, 405, 414 or 422) for anything that is not a well-formed id, and
/// never a 5xx for anything.
#[test]
fn hostile_ids_in_paths_get_json_errors() {
    let h = Hostile::start();
    let c = h.client();
    let token = h.rt.block_on(c.user("prop-ids"));
    h.check(128, (hostile_id(), hostile_id()), async |(id, other): (Vec<u8>, Vec<u8>)| {
        let e = percent_encode(&id);
        let o = percent_encode(&other);
        let both_valid = is_valid_id(&id) && is_valid_id(&other);
        let requests = [
            ("GET", format!("/check_import_status/{e}"), is_valid_id(&id)),
            ("GET", format!("/imports/{e}"), is_valid_id(&id)),
            ("GET", format!("/documents/{e}"), is_valid_id(&id)),
            ("DELETE", format!("/documents/{e}"), is_valid_id(&id)),
            ("GET", format!("/ai/streams/{e}"), is_valid_id(&id)),
            ("POST", format!("/ai/streams/{e}/cancel"), is_valid_id(&id)),
            ("GET", format!("/ai/sessions/{o}/{e}"), both_valid),
            ("GET", format!("/ai/sessions/generate/{e}"), is_valid_id(&id)),
            ("DELETE", format!("/ai/sessions/search/{e}"), is_valid_id(&id)),
            ("DELETE", format!("/ai/sessions/{e}/{o}"), both_valid),
        ];
        for (method, path, valid) in requests {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let r = c.http.request(method.clone(), c.url(&path)).bearer_auth(&token).send().await.unwrap();
            // `..` can resolve a path to `/`, the console's page.
            let console = method == reqwest::Method::GET && r.url().path() == "/";
            let shown = &path[..path.len().min(200)];
            let (status, body) = h.checked(r, &format!("{method} {shown}")).await;
            // A 405 comes from a `.` or `..` id: the client resolves it
            // away, and what is left can name another route (`/ai/streams/
            // ./cancel` is `GET /ai/streams/{id}` with the id `cancel`).
            if !valid && !console {
                assert!([404, 405, 414, 422].contains(&status), "{method} {shown}: {status} {body}");
            }
        }
    });
    h.assert_keys_are_bounded();
}

// --------------------------------------------------------------------- json

/// Keys the JSON endpoints read, so that random objects come near valid.
const KEYS: &[&str] = &[
    "username",
    "password",
    "task_id",
    "message",
    "text",
    "instruction",
    "document_ids",
    "REDIS_CACHE_ENABLED",
    "REDIS_TASK_STATUS_ENABLED",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        1 => Just(json!(u64::MAX)),
        3 => "[A-Za-z0-9_-]{1,70}".prop_map(Value::from),
        2 => any::<String>().prop_map(Value::from),
        1 => Just(json!("")),
        1 => Just(json!(" \u{3000}\t")),
    ];
    let key = prop_oneof![3 => select(KEYS).prop_map(str::to_owned), 1 => any::<String>()];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum JsonBody {
    /// Any JSON document.
    Value(Value),
    /// An object with the endpoints' own keys and random values.
    Object(BTreeMap<String, Value>),
    /// A document cut short.
    Cut(Value, Index),
    /// Not JSON at all.
    Bytes(Vec<u8>),
    /// Nested deeper than any parser should follow.
    Deep(usize),
}

impl JsonBody {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Value(v) => v.to_string().into_bytes(),
            Self::Object(m) => serde_json::to_vec(m).unwrap(),
            Self::Cut(v, at) => {
                let mut b = v.to_string().into_bytes();
                b.truncate(at.index(b.len()));
                b
            }
            Self::Bytes(b) => b.clone(),
            Self::Deep(n) => format!("{}1{}", "{\"a\":[".repeat(*n), "]}".repeat(*n)).into_bytes(),
        }
    }
}

fn json_body() -> impl Strategy<Value = JsonBody> {
    let field = prop_oneof![
        2 => "[A-Za-z0-9_-]{1,64}".prop_map(Value::from),
        1 => "[\\PC]{0,80}".prop_map(Value::from),
        1 => json_value(),
    ];
    let text = prop_oneof![
        3 => "[A-Za-z0-9_-]{1,64}".prop_map(Value::from),
        2 => "[\\PC]{0,40}".prop_map(Value::from),
        1 => json_value(),
    ];
    // The shapes of the real requests, with random values.
    let credentials = (text.clone(), text.clone())
        .prop_map(|(username, password)| JsonBody::Value(json!({"username": username, "password": password})));
    let turn = (text.clone(), text.clone(), text).prop_map(|(task_id, message, text)| {
        JsonBody::Value(json!({"task_id": task_id, "message": message, "text": text}))
    });
    prop_oneof![
        3 => json_value().prop_map(JsonBody::Value),
        3 => prop::collection::btree_map(select(KEYS).prop_map(str::to_owned), field, 0..5).prop_map(JsonBody::Object),
        1 => credentials,
        1 => turn,
        2 => (json_value(), any::<Index>()).prop_map(|(v, i)| JsonBody::Cut(v, i)),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(JsonBody::Bytes),
        1 => (100usize..5000).prop_map(JsonBody::Deep),
    ]
}

/// Random JSON (and not-JSON) to every JSON endpoint: a JSON 4xx unless
/// the body is a valid request, and a body that is not a JSON object, or
/// not sent as JSON, is never accepted.
#[test]
fn hostile_json_bodies_get_json_errors() {
    let h = Hostile::start();
    let c = h.client();
    let token = h.rt.block_on(async {
        let token = c.user("prop-json").await;
        // An admin, so that the flags endpoint reads the body rather than
        // refusing the caller first.
        sqlx::query("UPDATE users SET is_admin = 1 WHERE username = $1")
            .bind("prop-json")
            .execute(h.app.app.db.pool())
            .await
            .unwrap();
        token
    });
    let content_type = prop_oneof![
        8 => Just(Some("application/json")),
        1 => Just(Some("application/json; charset=utf-8")),
        1 => Just(Some("application/merge-patch+json")),
        1 => Just(Some("text/plain")),
        1 => Just(None),
    ];
    h.check(96, (json_body(), content_type), async |(body, content_type): (JsonBody, Option<&str>)| {
        let bytes = body.bytes();
        let is_object = matches!(serde_json::from_slice::<Value>(&bytes), Ok(Value::Object(_)));
        let sent_as_json = content_type.is_some_and(|ct| ct.starts_with("application/") && ct.contains("json"));
        for (method, path, auth) in [
            ("POST", "/auth/register", false),
            ("POST", "/auth/login", false),
            ("POST", "/ai/generate", true),
            ("POST", "/ai/optimize", true),
            ("POST", "/ai/search", true),
            ("PUT", "/admin/flags", true),
        ] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = c.http.request(method, c.url(path)).body(bytes.clone());
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            if auth {
                request = request.bearer_auth(&token);
            }
            let r = request.send().await.unwrap();
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            let what = format!("{path} with {content_type:?} {shown}");
            let (status, answer) = h.checked(r, &what).await;
            if !(is_object && sent_as_json) {
                assert!((400..500).contains(&status), "{what}: {status} {answer}");
            }
            // What a success looks like on each endpoint.
            match (path, status) {
                ("/auth/register", 201) => assert!(answer["username"].is_string(), "{what}: {answer}"),
                ("/auth/login", 200) => assert!(answer["access_token"].is_string(), "{what}: {answer}"),
                ("/admin/flags", 200) => assert!(answer["effective"].is_object(), "{what}: {answer}"),
                (p, 200) if p.starts_with("/ai/") => assert!(answer.is_null(), "{what}: an event stream"),
                (_, s) => assert!(s >= 400, "{what}: unexpected {s} {answer}"),
            }
        }
    });
    h.assert_keys_are_bounded();
}

// ---------------------------------------------------------- 414 and 431

/// An over-long URI and an over-large header block get the service's own
/// JSON answer (414 `uri_too_long`, 431 `headers_too_large`); just below
/// the limits, requests are served.
#[tokio::test]
async fn over_long_uris_and_header_blocks_get_json_answers() {
    use reportd::http::{MAX_HEADER_BYTES, MAX_URI_BYTES};
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let expect = async |r: reqwest::Response, status: u16, code: &str| {
        assert_eq!(r.status(), status);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], code, "{body}");
        assert!(body["detail"].is_string());
    };

    let fits = format!("/healthz?pad={}", "a".repeat(MAX_URI_BYTES - 20));
    assert_eq!(c.http.get(c.url(&fits)).send().await.unwrap().status(), 200);
    let long = format!("/healthz?pad={}", "a".repeat(MAX_URI_BYTES));
    expect(c.http.get(c.url(&long)).send().await.unwrap(), 414, "uri_too_long").await;
    // Refused before anything else: no 401 for the missing token.
    let long = format!("/documents/{}", "b".repeat(MAX_URI_BYTES));
    expect(c.http.get(c.url(&long)).send().await.unwrap(), 414, "uri_too_long").await;

    let padded = |total: usize| {
        let mut request = c.http.get(c.url("/healthz"));
        for i in 0..total / 2048 {
            request = request.header(format!("x-pad-{i:02}"), "h".repeat(2048 - 12));
        }
        request
    };
    assert_eq!(padded(MAX_HEADER_BYTES - 2048).send().await.unwrap().status(), 200);
    expect(padded(MAX_HEADER_BYTES + 4096).send().await.unwrap(), 431, "headers_too_large").await;
    // One big header, still below hyper's own limit.
    let big = c.http.get(c.url("/healthz")).header("x-big", "h".repeat(MAX_HEADER_BYTES + 100));
    expect(big.send().await.unwrap(), 431, "headers_too_large").await;
    assert_eq!(c.http.get(c.url("/healthz")).send().await.unwrap().status(), 200);
}

/// Sends `request` on a fresh connection and returns the status code and
/// the raw response (until the server closes or 5 s pass). The request is
/// written by a task of its own: the server may answer and close before
/// reading all of it.
async fn raw_exchange(addr: &str, request: Vec<u8>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        // Held open until the answer is read: a closed write side could
        // end the exchange before the server answers.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
            // A whole bodiless or JSON answer is in once its declared length is.
            let text = String::from_utf8_lossy(&response);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok());
                if length.is_some_and(|n| body.len() >= n) {
                    break;
                }
            }
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// The body of a raw response (after the head).
fn raw_body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// Beyond what the service sees, hyper answers by itself, without a body:
/// a head larger than its read buffer (431), a URI past its own 64 KiB
/// bound (414), more than 100 headers (431), a malformed head (400). In
/// between, the service's JSON answer arrives on the same raw connection.
/// The server lives through all of it.
///
/// hyper checks its buffer bound only while a head is incomplete, after a
/// read that may have filled up to about twice the bound: a head somewhat
/// larger than `max_buf_size` can still be read whole (and then gets the
/// service's JSON 431). The bodiless cases here are far beyond it.
#[tokio::test]
async fn heads_beyond_the_service_get_hyper_answers_and_the_server_lives() {
    use reportd::http::{MAX_HEADER_BYTES, MAX_URI_BYTES};
    let t = TestApp::spawn(|s| s).await;
    let addr = t.client.base.trim_start_matches("http://").to_owned();
    let get = |target: &str, headers: &str| format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").into_bytes();
    let alive = async || {
        let r = t.client.http.get(t.client.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200, "the server lives");
    };

    // The service's own answers, as a raw client sees them.
    let (status, text) = raw_exchange(&addr, get(&format!("/healthz?{}", "u".repeat(MAX_URI_BYTES)), "")).await;
    assert_eq!(status, 414, "{text}");
    assert!(raw_body(&text).contains("\"uri_too_long\""), "{text}");
    let header = format!("x-big: {}\r\n", "h".repeat(MAX_HEADER_BYTES + 1024));
    let (status, text) = raw_exchange(&addr, get("/healthz", &header)).await;
    assert_eq!(status, 431, "{text}");
    assert!(raw_body(&text).contains("\"headers_too_large\""), "{text}");
    alive().await;

    // hyper's own, bodiless.
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a 1 MiB header", get("/healthz", &format!("x-big: {}\r\n", "h".repeat(1024 * 1024))), 431),
        ("a 70 000-byte URI", get(&format!("/healthz?{}", "u".repeat(70_000)), ""), 414),
        ("a 1 MiB URI", get(&format!("/healthz?{}", "u".repeat(1024 * 1024)), ""), 431),
        ("150 headers", get("/healthz", &(0..150).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()), 431),
        ("a malformed header line", get("/healthz", "this is not a header\r\n"), 400),
        ("a malformed request line", b"GET /healthz HTTP/9.9 extra\r\n\r\n".to_vec(), 400),
    ];
    for (what, request, expected) in cases {
        let (status, text) = raw_exchange(&addr, request).await;
        assert_eq!(status, expected, "{what}: {text}");
        assert_eq!(raw_body(&text), "", "{what}: hyper's answer has no body");
        alive().await;
    }
}
