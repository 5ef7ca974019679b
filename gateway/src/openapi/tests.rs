//! The document against the router, the gateway's flags and docs/API.md.

use std::collections::BTreeSet;

use super::*;

/// (method, path) of every documented operation.
fn documented() -> BTreeSet<(String, String)> {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    // The router's table (router.rs), method by method.
    let routed: BTreeSet<(String, String)> = [
        ("POST", "/init"),
        ("GET", "/status"),
        ("POST", "/add"),
        ("DELETE", "/rm"),
        ("GET", "/read"),
        ("POST", "/read"),
        ("GET", "/read/{server}"),
        ("POST", "/read/{server}"),
        ("POST", "/write"),
        ("PUT", "/update"),
        ("DELETE", "/del"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect();
    assert_eq!(documented(), routed);
    let router_src = include_str!("../router.rs");
    for (_, path) in &routed {
        assert!(
            router_src.contains(&format!("\"{path}\"")),
            "{path} is documented but not in router.rs"
        );
    }
}

#[test]
fn the_document_is_openapi_3_with_bodies_and_errors() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let write = &doc["paths"]["/write"]["post"];
    assert!(write["requestBody"].is_object());
    for code in ["200", "400", "409", "413", "503"] {
        assert!(write["responses"][code].is_object(), "/write {code}");
    }
    let row = &doc["components"]["schemas"]["Row"];
    assert_eq!(row["additionalProperties"], false);
    assert_eq!(
        row["required"],
        serde_json::json!(["Stud_id", "Stud_name", "Stud_marks"])
    );
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
}
