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
        ("GET", "/backup"),
        ("POST", "/restore"),
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

/// The lines of the `## <title>` section of docs/API.md (up to the next `## `).
fn api_md_section(title: &str) -> Vec<&'static str> {
    let api_md: &'static str = include_str!("../../../docs/API.md");
    api_md
        .lines()
        .skip_while(|l| l.trim_end() != format!("## {title}"))
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect()
}

#[test]
fn api_md_has_a_heading_for_every_operation_and_no_other() {
    let mut headed = BTreeSet::new();
    for line in api_md_section("Gateway endpoints") {
        let Some(heading) = line.strip_prefix("### ") else {
            continue;
        };
        let mut words = heading.split_whitespace();
        let (Some(methods), Some(path), None) = (words.next(), words.next(), words.next()) else {
            panic!("docs/API.md: {line:?} is not `### METHOD /path`");
        };
        for method in methods.split('|') {
            assert!(
                headed.insert((method.to_owned(), path.to_owned())),
                "docs/API.md has {method} {path} twice"
            );
        }
    }
    let documented = documented();
    let missing: Vec<_> = documented.difference(&headed).collect();
    let extra: Vec<_> = headed.difference(&documented).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/API.md lacks {missing:?} and lists {extra:?}, which /openapi.json does not have"
    );
}

#[test]
fn api_md_lists_every_error_code_with_its_status_and_outcome() {
    let mut rows = std::collections::BTreeMap::new();
    for line in api_md_section("Error codes") {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| `code` | status | `outcome` | meaning |" splits into ["", code, status, outcome, …].
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        let code = cells[1].trim_matches('`').to_owned();
        let row = (cells[2].to_owned(), cells[3].trim_matches('`').to_owned());
        assert!(rows.insert(code.clone(), row).is_none(), "{code} twice");
    }
    for c in shardline::ErrorCode::ALL {
        let (status, outcome) = rows
            .remove(c.as_str())
            .unwrap_or_else(|| panic!("docs/API.md's error code table lacks `{c}`"));
        assert_eq!(status, c.status().as_u16().to_string(), "status of {c}");
        assert_eq!(outcome, schemas::outcome_str(c.effect()), "outcome of {c}");
    }
    assert!(
        rows.is_empty(),
        "docs/API.md lists codes that do not exist: {rows:?}"
    );
}

#[test]
fn the_failure_schema_lists_every_code_and_outcome() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let codes: Vec<&str> = shardline::ErrorCode::ALL.map(|c| c.as_str()).to_vec();
    assert_eq!(schemas["ErrorCode"]["enum"], serde_json::json!(codes));
    let text = schemas["ErrorCode"]["description"].as_str().unwrap();
    for c in shardline::ErrorCode::ALL {
        assert!(text.contains(c.meaning()), "{c}'s meaning");
    }
    let outcomes: BTreeSet<&str> = shardline::ErrorCode::ALL
        .map(|c| schemas::outcome_str(c.effect()))
        .into_iter()
        .collect();
    let documented: BTreeSet<&str> = schemas["Outcome"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(documented, outcomes);
    for e in [shardline::Effect::NotApplied, shardline::Effect::Unknown] {
        assert_eq!(serde_json::to_value(e).unwrap(), schemas::outcome_str(e));
    }
    for failure in ["Failure", "WriteFailure"] {
        let required = &schemas[failure]["required"];
        for field in ["message", "code", "outcome", "status"] {
            assert!(
                required.as_array().unwrap().iter().any(|f| f == field),
                "{failure}.{field} is required"
            );
        }
    }
}

#[test]
fn bounds_are_the_gateway_defaults_and_the_name_grammars() {
    use clap::Parser;
    let config = crate::Config::try_parse_from(["gateway"]).unwrap();
    assert_eq!(config.max_batch, schemas::DEFAULT_MAX_BATCH);
    assert_eq!(config.max_read_rows, schemas::DEFAULT_MAX_READ_ROWS);
    assert_eq!(config.max_string_bytes, schemas::DEFAULT_MAX_STRING_BYTES);
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let s = &doc["components"]["schemas"];
    assert_eq!(
        s["WriteRequest"]["properties"]["data"]["maxItems"],
        schemas::DEFAULT_MAX_BATCH
    );
    assert_eq!(
        s["ReadResponse"]["properties"]["data"]["maxItems"],
        schemas::DEFAULT_MAX_READ_ROWS
    );
    assert_eq!(
        s["Row"]["properties"]["Stud_name"]["maxLength"],
        schemas::DEFAULT_MAX_STRING_BYTES
    );
    assert_eq!(
        s["SchemaDoc"]["properties"]["columns"]["maxItems"],
        schemas::MAX_COLUMNS
    );
    // The patterns are the grammars `shardline::names` checks (its errors quote them).
    assert_eq!(s["ShardId"]["pattern"], schemas::NAME_PATTERN);
    assert_eq!(s["ServerName"]["pattern"], schemas::NAME_PATTERN);
    assert_eq!(s["ColumnName"]["pattern"], schemas::COLUMN_PATTERN);
    let e = shardline::names::ShardId::parse("a b").unwrap_err();
    assert!(e.contains(schemas::NAME_PATTERN), "{e}");
    let e = shardline::names::ServerName::parse("").unwrap_err();
    assert!(e.contains(schemas::NAME_PATTERN), "{e}");
    let e = shardline::names::ColumnName::parse("1x").unwrap_err();
    assert!(e.contains(schemas::COLUMN_PATTERN), "{e}");
    // No shard can hold i64::MAX (ranges are half-open and end at most there).
    assert_eq!(s["Row"]["properties"]["Stud_id"]["maximum"], i64::MAX - 1);
    assert_eq!(s["KeyRange"]["properties"]["low"]["minimum"], i64::MIN);
}

#[test]
fn request_bodies_refuse_unknown_fields_and_null_optionals() {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let s = &doc["components"]["schemas"];
    for body in [
        "Row",
        "KeyRange",
        "ReadRequest",
        "WriteRequest",
        "UpdateRequest",
        "DeleteRequest",
        "SchemaDoc",
        "ShardSpecDoc",
        "InitRequestDoc",
        "AddRequestDoc",
        "RmRequestDoc",
    ] {
        assert_eq!(s[body]["additionalProperties"], false, "{body}");
    }
    // Optional, and refused as null by the manager's serde types.
    assert_eq!(
        s["AddRequestDoc"]["properties"]["new_shards"]["type"],
        "array"
    );
    assert_eq!(s["RmRequestDoc"]["properties"]["servers"]["type"], "array");
}

#[test]
fn the_read_levels_are_the_gateways() {
    use shardline::internal::ReadLevel;
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let schema = &doc["components"]["schemas"]["Consistency"];
    let levels = [ReadLevel::Any, ReadLevel::Primary, ReadLevel::Linearizable];
    let names: Vec<&str> = levels.map(|l| l.as_str()).to_vec();
    assert_eq!(schema["enum"], serde_json::json!(names));
    for l in levels {
        assert_eq!(serde_json::to_value(l).unwrap(), l.as_str());
    }
    // Each level's guarantee is stated where clients look: the schema and docs/API.md.
    let text = schema["description"].as_str().unwrap();
    let read_md = api_md_section("Gateway endpoints")
        .into_iter()
        .skip_while(|l| *l != "### GET /read")
        .take_while(|l| *l != "### POST /read")
        .collect::<Vec<_>>()
        .join("\n");
    for name in names {
        assert!(text.contains(&format!("`{name}`")), "{name} in the schema");
        assert!(
            read_md.contains(&format!("`\"{name}\"`")),
            "{name} in docs/API.md"
        );
    }
}
