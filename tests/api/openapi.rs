//! The API reference: `GET /openapi.json` is a valid OpenAPI 3.1 document
//! that covers every route the router serves (and nothing it does not),
//! with the bearer scheme on exactly the authenticated operations; `GET
//! /docs` is Swagger UI that loads nothing from another origin.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::helpers::TestApp;

/// The operations that need no token (SPEC §5, plus the reference itself
/// and the console, whose page and files are public).
const PUBLIC: &[&str] = &[
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "POST /auth/register",
    "POST /auth/login",
    "GET /openapi.json",
    "GET /",
    "GET /assets/{path}",
];

/// Routes the router serves that the document leaves out, each with why.
/// They are the only routes not registered through `OpenApiRouter::routes`
/// (see `registrations_all_go_through_the_openapi_router`).
const UNDOCUMENTED: &[(&str, &str)] = &[
    ("/docs", "Swagger UI's page (a redirect to /docs/): the reference's viewer, not an API operation"),
    ("/docs/", "Swagger UI's page"),
    ("/docs/{*rest}", "Swagger UI's static files"),
];

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

async fn document(t: &TestApp) -> Value {
    let r = t.client.http.get(t.client.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    r.json().await.unwrap()
}

/// Every (method, path, operation) of the document.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                out.push((method.to_uppercase(), path.clone(), op));
            }
        }
    }
    out
}

/// Every `$ref` string anywhere in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// `reference` (`#/components/…`) resolved in `doc`.
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

#[tokio::test]
async fn the_document_is_valid_openapi_3_1() {
    let t = TestApp::spawn(|s| s).await;
    let doc = document(&t).await;

    // It parses as OpenAPI 3.1 with a validating model of the specification.
    let spec = oas3::from_json(doc.to_string()).expect("an OpenAPI 3.1 document");
    let version = spec.validate_version().expect("a supported version");
    assert_eq!((version.major, version.minor), (3, 1));
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    // And it is the document the code generates.
    assert_eq!(doc, serde_json::to_value(reportd::http::openapi::document()).unwrap());

    // Every reference resolves within the document.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 50, "the operations refer to their schemas: {}", all.len());
    for r in all {
        assert!(r.starts_with("#/"), "an external reference: {r}");
        assert!(resolve(&doc, r).is_some(), "{r} does not resolve");
    }

    // Every operation has responses and a unique operationId; path
    // parameters are declared; every error response is the error schema.
    let ops = operations(&doc);
    let mut ids = BTreeSet::new();
    for (method, path, op) in &ops {
        let responses = op["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}: no responses"));
        assert!(!responses.is_empty(), "{method} {path}: no responses");
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
        assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(['{', '}']);
            let declared = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true));
            assert!(declared, "{method} {path}: path parameter {name} not declared");
        }
        for (status, response) in responses {
            let Some(content) = response.get("content") else { continue };
            if status.starts_with('4') || (status.as_str() == "503" && path != "/readyz") {
                assert_eq!(
                    content["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
                    "{method} {path} {status}"
                );
            }
        }
    }
    // The error schema is SPEC §5's.
    let error = &doc["components"]["schemas"]["Error"];
    let mut required: Vec<&str> = error["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    required.sort();
    assert_eq!(required, ["code", "detail"]);

    // Uploads are multipart with a binary `file`; login takes JSON or a form.
    let upload = &doc["paths"]["/imports"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"];
    let upload = resolve(&doc, upload["$ref"].as_str().unwrap()).unwrap();
    assert_eq!(upload["properties"]["file"]["format"], "binary", "{upload}");
    assert_eq!(upload["required"], serde_json::json!(["file"]));
    let login = doc["paths"]["/auth/login"]["post"]["requestBody"]["content"].as_object().unwrap();
    let types: BTreeSet<&str> = login.keys().map(String::as_str).collect();
    assert_eq!(types, BTreeSet::from(["application/json", "application/x-www-form-urlencoded"]));

    // The streams answer text/event-stream, with each event type described.
    let stream_event = &doc["components"]["schemas"]["StreamEvent"]["oneOf"];
    let events: BTreeSet<&str> = stream_event
        .as_array()
        .expect("StreamEvent is one of the events")
        .iter()
        .map(|e| e["properties"]["event"]["enum"][0].as_str().expect("an event name"))
        .collect();
    assert_eq!(events, BTreeSet::from(["start", "delta", "tool_call", "tool_result", "done", "error"]));
    for (method, path) in
        [("post", "/ai/generate"), ("post", "/ai/optimize"), ("post", "/ai/search"), ("get", "/ai/streams/{stream_id}")]
    {
        let ok = &doc["paths"][path][method]["responses"]["200"];
        let ok = ok.get("$ref").and_then(|r| resolve(&doc, r.as_str().unwrap())).unwrap_or(ok);
        let schema = &ok["content"]["text/event-stream"]["schema"];
        assert_eq!(schema["$ref"], "#/components/schemas/StreamEvent", "{method} {path}: {ok}");
        let description = ok["description"].as_str().unwrap();
        for event in &events {
            assert!(description.contains(&format!("`{event}`")), "{path}: {event} not described");
        }
    }
    let resume = doc["paths"]["/ai/streams/{stream_id}"]["get"]["parameters"].as_array().unwrap();
    assert!(resume.iter().any(|p| p["name"] == "Last-Event-ID" && p["in"] == "header"), "{resume:?}");
}

#[tokio::test]
async fn the_bearer_scheme_is_on_exactly_the_authenticated_operations() {
    let t = TestApp::spawn(|s| s).await;
    let doc = document(&t).await;
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    let mut public_seen = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let name = format!("{method} {path}");
        let security = op.get("security");
        if PUBLIC.contains(&name.as_str()) {
            public_seen.insert(name.clone());
            assert!(security.is_none_or(|s| s.as_array().is_some_and(Vec::is_empty)), "{name} is public: {security:?}");
        } else {
            assert_eq!(security, Some(&serde_json::json!([{"bearer": []}])), "{name} needs the bearer token");
            let unauthorized = &op["responses"]["401"];
            assert!(unauthorized.is_object(), "{name} documents its 401");
        }
    }
    assert_eq!(public_seen, PUBLIC.iter().map(|s| s.to_string()).collect(), "every public operation is documented");
    // No global requirement that a public operation would inherit.
    assert!(doc.get("security").is_none_or(|s| s.as_array().is_some_and(Vec::is_empty)));
}

/// The literal paths of the `routes!`-free registrations in `source`:
/// `.route("…"`, `.route_service("…"`, `.nest("…"`, `.nest_service("…"`.
fn plain_registrations(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for call in [".route(", ".route_service(", ".nest(", ".nest_service(", ".fallback_service("] {
        for (at, _) in source.match_indices(call) {
            let rest = &source[at + call.len()..];
            out.push(rest.split(',').next().unwrap_or_default().trim().to_owned());
        }
    }
    out
}

/// Every route of the service is registered through utoipa-axum's
/// `OpenApiRouter::routes` (which documents it from its handler's
/// annotation) or is Swagger UI's. Read from the sources: axum cannot list
/// a router's routes.
#[test]
fn registrations_all_go_through_the_openapi_router() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routers = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        let plain = plain_registrations(&source);
        assert!(plain.is_empty(), "{}: routes registered without documentation: {plain:?}", path.display());
        let plain_router = source
            .match_indices("Router::new()")
            .any(|(at, _)| source[..at].chars().next_back().is_none_or(|c| !c.is_alphanumeric() && c != '_'));
        assert!(!plain_router, "{}: a plain axum Router", path.display());
        routers += source.matches("OpenApiRouter::new()").count();
    }
    assert!(routers >= 8, "one OpenApiRouter per module: {routers}");
    let mod_rs = std::fs::read_to_string(dir.join("mod.rs")).unwrap();
    assert!(mod_rs.contains(".merge(openapi::swagger_ui())"), "Swagger UI is the one other router");
}

/// A path of the document with sample values for its parameters.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{kind}" => "generate",
            "{path}" => "app.js",
            s if s.starts_with('{') => "sample-id",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_documented_operation_is_served_and_every_served_route_documented() {
    let t = TestApp::spawn(|s| s).await;
    let token = t.client.user("openapi-alice").await;
    let doc = document(&t).await;
    let ops = operations(&doc);
    assert!(ops.len() >= 25, "{} operations", ops.len());
    for (method, path, _) in &ops {
        let url = t.client.url(&concrete(path));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = t.client.http.request(method.clone(), &url).bearer_auth(&token).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let fallback = body["code"] == "not_found" && body["detail"] == "no such endpoint";
        assert!(!fallback && status != 405, "{method} {path}: {status} {body}");
    }
    // The legacy upload and status paths and their aliases are all there.
    for path in ["/Import_Doc/", "/Import_Doc", "/imports", "/check_import_status/{task_id}", "/imports/{task_id}"] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    // What the document leaves out is served, and is only Swagger UI.
    for (path, why) in UNDOCUMENTED {
        assert!(doc["paths"].get(*path).is_none() && !why.is_empty());
        let r = t.client.http.get(t.client.url(&path.replace("{*rest}", "swagger-ui.css"))).send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    }
}

/// The properties and the required ones of an object schema, through
/// `$ref`s and `allOf` (which is how a flattened struct is written).
fn object_schema<'a>(
    doc: &'a Value,
    schema: &'a Value,
    properties: &mut BTreeMap<String, &'a Value>,
    required: &mut BTreeSet<String>,
) {
    let schema = schema.get("$ref").map_or(schema, |r| resolve(doc, r.as_str().unwrap()).unwrap());
    for part in schema["allOf"].as_array().into_iter().flatten() {
        object_schema(doc, part, properties, required);
    }
    for (k, v) in schema["properties"].as_object().into_iter().flatten() {
        properties.insert(k.clone(), v);
    }
    required.extend(schema["required"].as_array().into_iter().flatten().map(|v| v.as_str().unwrap().to_owned()));
}

/// The keys of a JSON answer against its documented schema: every key is
/// a property, every required property is there.
fn check_shape(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let mut properties = BTreeMap::new();
    let mut required = BTreeSet::new();
    object_schema(doc, schema, &mut properties, &mut required);
    let object = value.as_object().unwrap_or_else(|| panic!("{what}: not an object: {value}"));
    for key in object.keys() {
        assert!(properties.contains_key(key), "{what}: {key} is not documented");
    }
    for key in &required {
        assert!(object.contains_key(key), "{what}: the required {key} is missing");
    }
}

#[tokio::test]
async fn answers_have_their_documented_shape() {
    let t = TestApp::spawn(|s| s).await;
    let token = t.client.user("openapi-bob").await;
    let doc = document(&t).await;
    let schema = |path: &str, status: &str| {
        doc["paths"][path]["get"]["responses"][status]["content"]["application/json"]["schema"].clone()
    };
    let (_, ready) = t.client.readyz().await;
    check_shape(&doc, &schema("/readyz", "200"), &ready, "/readyz");
    let features = resolve(&doc, "#/components/schemas/FeatureStatus").unwrap();
    for (name, feature) in ready["features"].as_object().unwrap() {
        check_shape(&doc, features, feature, name);
    }
    let health = t.client.http.get(t.client.url("/healthz")).send().await.unwrap().json().await.unwrap();
    check_shape(&doc, &schema("/healthz", "200"), &health, "/healthz");
    let me = t.client.json(&token, "/auth/me").await;
    check_shape(&doc, &schema("/auth/me", "200"), &me, "/auth/me");
    let task = t.client.imported(&token).await;
    let status = t.client.json(&token, &format!("/imports/{task}")).await;
    check_shape(&doc, &schema("/imports/{task_id}", "200"), &status, "a task");
    let list = t.client.json(&token, "/documents").await;
    check_shape(&doc, &schema("/documents", "200"), &list, "/documents");
    let item_schema = &doc["components"]["schemas"]["DocumentList"]["properties"]["items"]["items"];
    check_shape(&doc, item_schema, &list["items"][0], "a document");
    let id = list["items"][0]["id"].as_str().unwrap();
    let detail = t.client.json(&token, &format!("/documents/{id}")).await;
    check_shape(&doc, &schema("/documents/{id}", "200"), &detail, "a document with chunks");
    let hits = t.client.json(&token, "/documents/search?q=Mars").await;
    check_shape(&doc, &schema("/documents/search", "200"), &hits, "search");
    let r = t.client.get(&token, "/documents/nope").await;
    let error: Value = r.json().await.unwrap();
    check_shape(&doc, &schema("/documents/{id}", "404"), &error, "an error");
}

/// The `src` and `href` attribute values of an HTML page.
fn attributes(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["src=", "href="] {
        for (at, _) in html.match_indices(name) {
            let rest = &html[at + name.len()..];
            let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else { continue };
            out.push(rest[1..].split(quote).next().unwrap_or_default().to_owned());
        }
    }
    out
}

fn external(url: &str) -> bool {
    let url = url.trim().to_ascii_lowercase();
    url.starts_with("http:") || url.starts_with("https:") || url.starts_with("//")
}

#[tokio::test]
async fn swagger_ui_is_served_and_loads_nothing_from_elsewhere() {
    let t = TestApp::spawn(|s| s).await;
    let r = t.client.http.get(t.client.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.url().path(), "/docs/");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = r.text().await.unwrap();
    let referenced = attributes(&html);
    assert!(referenced.iter().any(|a| a.ends_with(".js")), "{html}");
    for url in &referenced {
        assert!(!external(url), "the page loads {url}");
        let r =
            t.client.http.get(t.client.url(&format!("/docs/{}", url.trim_start_matches("./")))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let text = r.text().await.unwrap();
        if url.ends_with(".css") {
            // What a style sheet loads is in its `url(…)`s.
            for (at, _) in text.match_indices("url(") {
                let target = text[at + 4..].split(')').next().unwrap().trim_matches(['"', '\'', ' ']);
                assert!(!external(target), "{url} loads {target}");
            }
        }
    }
    // The configuration: this service's document, no validator badge (it
    // would load an image from validator.swagger.io), Try it out on. The
    // bundle itself contains URLs in links and licences, none of which the
    // page loads by itself.
    let init = t.client.http.get(t.client.url("/docs/swagger-initializer.js")).send().await.unwrap();
    assert_eq!(init.status(), 200);
    let init = init.text().await.unwrap();
    assert!(!init.contains("http://") && !init.contains("https://"), "{init}");
    assert!(init.contains("\"/openapi.json\""), "{init}");
    assert!(init.contains("\"validatorUrl\": \"none\"") || init.contains("\"validatorUrl\":\"none\""), "{init}");
    assert!(init.contains("\"tryItOutEnabled\": true") || init.contains("\"tryItOutEnabled\":true"), "{init}");
}
