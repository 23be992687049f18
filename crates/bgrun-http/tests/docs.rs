//! docs/HTTP-API.md stays true to the server: every route of `/openapi.json`, with each of its
//! methods, is on that page, and the page names no route the server lacks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

#[tokio::test]
async fn the_http_api_page_lists_exactly_the_servers_routes() {
    let fixture = common::fixture().await;
    let openapi = fixture.get("/openapi.json").await.json();
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/HTTP-API.md"
    ))
    .unwrap();
    let mut served = BTreeSet::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        served.insert(path.clone());
        assert!(
            page.contains(path.as_str()),
            "docs/HTTP-API.md does not mention {path}"
        );
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let mentioned = page
                .lines()
                .filter(|line| line.contains(path.as_str()))
                .any(|line| line.contains(&method));
            assert!(mentioned, "docs/HTTP-API.md does not show {method} {path}");
        }
    }
    // Every route-looking path on the page is served.
    for word in page.split(|c: char| c.is_whitespace() || c == '`' || c == ',') {
        let path = word.trim_end_matches(|c: char| !c.is_alphanumeric() && c != '}');
        let is_route = [
            "/agents",
            "/teams",
            "/workflows",
            "/health",
            "/metrics",
            "/openapi.json",
            "/v1/stream",
        ]
        .iter()
        .any(|root| path.starts_with(root))
            && !path.contains('?')
            && !path.contains('…');
        if is_route {
            assert!(
                served.contains(path),
                "docs/HTTP-API.md names {path}, which the server lacks"
            );
        }
    }
}
