//! Accounts and every 401 / 422 case of SPEC §3 and §5.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{JWT_SECRET, TestApp};

#[tokio::test]
async fn register_login_and_me() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let r = c.register("alice", "correct horse battery").await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["username"], "alice");
    let id = body["id"].as_str().unwrap().to_owned();

    let r = c.register("alice", "another password").await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "username_taken");

    // JSON login.
    let token = c.login("alice", "correct horse battery").await;
    let me = c.json(&token, "/auth/me").await;
    assert_eq!(me, json!({"id": id, "username": "alice", "is_admin": false}));

    // OAuth2 password form login, as FastAPI's front end sends it.
    let r = c
        .http
        .post(c.url("/auth/login"))
        .form(&[("username", "alice"), ("password", "correct horse battery"), ("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 86_400);

    for (user, pw) in [("alice", "wrong password"), ("nobody", "correct horse battery")] {
        let r =
            c.http.post(c.url("/auth/login")).json(&json!({"username": user, "password": pw})).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body, json!({"detail": "invalid username or password", "code": "invalid_credentials"}));
    }
}

#[tokio::test]
async fn registration_input_is_validated() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    assert_eq!(c.register("bob", "short").await.status(), 422);
    assert_eq!(c.register("", "long enough password").await.status(), 422);
    assert_eq!(c.register("bad\nname", "long enough password").await.status(), 422);
    let r = c
        .http
        .post(c.url("/auth/register"))
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_json");
    let r = c.http.post(c.url("/auth/register")).json(&json!({"username": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r = c.http.post(c.url("/auth/register")).body("x").send().await.unwrap();
    assert_eq!(r.status(), 415);
}

/// Hardening finding "Look-alike usernames": every look-alike of an existing
/// name is either the same name (409, as a taken name) or refused (422), and
/// a case variant logs in to the one account.
#[tokio::test]
async fn look_alike_usernames_are_one_account_or_refused() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let r = c.register("alice", "correct horse battery").await;
    assert_eq!(r.status(), 201);
    let alice: Value = r.json().await.unwrap();
    // NFC é.
    let r = c.register("caf\u{e9}", "correct horse battery").await;
    assert_eq!(r.status(), 201);
    let cafe: Value = r.json().await.unwrap();

    for name in ["ALICE", "Alice", "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}", "caf\u{65}\u{301}", "CAF\u{c9}"] {
        let r = c.register(name, "another password").await;
        assert_eq!(r.status(), 409, "{name:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "username_taken", "{name:?}");
    }
    for name in ["ali\u{200b}ce", "\u{feff}alice", "alice\u{feff}", "\u{202e}ecila", "al\u{200d}ice", "alice\u{2066}"] {
        let r = c.register(name, "another password").await;
        assert_eq!(r.status(), 422, "{name:?}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_username", "{name:?}");
    }
    // The stored name is the NFKC form: fullwidth registers as plain.
    let r = c.register("\u{ff22}\u{ff4f}\u{ff42}", "correct horse battery").await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["username"], "Bob");

    // A case or compatibility variant logs in as the account; the displayed
    // name is the registered one.
    for (typed, account) in [("ALICE", &alice), ("\u{ff41}lice", &alice), ("CAFE\u{301}", &cafe)] {
        let token = c.login(typed, "correct horse battery").await;
        let me = c.json(&token, "/auth/me").await;
        assert_eq!(me["id"], account["id"], "{typed:?}");
        assert_eq!(me["username"], account["username"], "{typed:?}");
    }
    let token = c.login("BOB", "correct horse battery").await;
    assert_eq!(c.json(&token, "/auth/me").await["username"], "Bob");
    // The wrong password for a variant is still 401.
    let r = c
        .http
        .post(c.url("/auth/login"))
        .json(&json!({"username": "ALICE", "password": "wrong password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

fn sign(header: &Header, claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn every_bad_token_is_401() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("carol").await;
    let sub = c.json(&token, "/auth/me").await["id"].as_str().unwrap().to_owned();
    let good = json!({"sub": sub, "exp": now() + 600});

    let expired = sign(&Header::new(Algorithm::HS256), &json!({"sub": sub, "exp": now() - 10}), JWT_SECRET.as_bytes());
    let wrong_secret = sign(&Header::new(Algorithm::HS256), &good, b"another-secret-another-secret-0123456789");
    let hs512 = sign(&Header::new(Algorithm::HS512), &good, JWT_SECRET.as_bytes());
    let no_exp = sign(&Header::new(Algorithm::HS256), &json!({"sub": sub}), JWT_SECRET.as_bytes());
    let bad_sub =
        sign(&Header::new(Algorithm::HS256), &json!({"sub": "a:b", "exp": now() + 600}), JWT_SECRET.as_bytes());
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    let valid = sign(&Header::new(Algorithm::HS256), &good, JWT_SECRET.as_bytes());
    let tampered = {
        let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(json!({"sub": "someone-else", "exp": now() + 600}).to_string());
        parts.join(".")
    };

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        ("empty bearer", Some("Bearer ".into())),
        ("not a jwt", Some("Bearer garbage".into())),
        ("basic scheme", Some("Basic YWxpY2U6cGFzc3dvcmQ=".into())),
        ("no scheme", Some(valid.clone())),
        ("expired", Some(format!("Bearer {expired}"))),
        ("wrong secret", Some(format!("Bearer {wrong_secret}"))),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        ("hs512", Some(format!("Bearer {hs512}"))),
        ("no exp", Some(format!("Bearer {no_exp}"))),
        ("sub not an id", Some(format!("Bearer {bad_sub}"))),
        ("tampered payload", Some(format!("Bearer {tampered}"))),
    ];
    for path in ["/auth/me", "/documents", "/check_import_status/abc", "/imports/abc", "/admin/flags"] {
        for (what, header) in &cases {
            let mut req = c.http.get(c.url(path));
            if let Some(h) = header {
                req = req.header("authorization", h);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{what} on {path}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "unauthorized", "{what} on {path}: {body}");
        }
    }
    // The well-formed token is accepted, so the cases above fail for their own reason.
    let r = c.http.get(c.url("/auth/me")).header("authorization", format!("bearer {valid}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn ids_outside_the_alphabet_are_422() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let token = c.user("dave").await;
    let long = "a".repeat(65);
    for id in ["a:b", "*", "a%20b", long.as_str(), "a%00b", "%5Bx%5D", "a%3Fb", "a%0Ab", "%E7%81%AB"] {
        for prefix in ["/check_import_status/", "/imports/", "/documents/"] {
            let r = c.get(&token, &format!("{prefix}{id}")).await;
            assert_eq!(r.status(), 422, "{prefix}{id}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "invalid_id", "{prefix}{id}");
            assert!(!body["detail"].as_str().unwrap().contains(id), "the id is not echoed");
        }
    }
    // 64 characters is still an id.
    let r = c.get(&token, &format!("/imports/{}", "a".repeat(64))).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let t = TestApp::spawn(|s| s).await;
    let c = &t.client;
    let r = c.http.get(c.url("/no/such/thing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    let r = c.http.delete(c.url("/auth/login")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "method_not_allowed");
}
