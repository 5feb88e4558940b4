//! What every service that serves an OpenAPI document shares: rendering it once,
//! answering `GET /openapi.json` with it, and the check behind each service's
//! "every served route is documented" test.
//!
//! The documents themselves (and their error schemas, which differ: the public and
//! admin APIs answer `{"error":{"code","message"}}`, the callback resolver
//! `{"error":"<message>"}`) stay with their services.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::OpenApi;

/// `doc` as JSON, to be rendered once and served many times.
pub fn render(doc: &OpenApi) -> Bytes {
    // Serialising our own document cannot fail; an empty answer would show if it did.
    Bytes::from(serde_json::to_vec(doc).unwrap_or_default())
}

/// The answer to `GET /openapi.json`: a rendered document.
pub fn json_response(rendered: &Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        rendered.clone(),
    )
        .into_response()
}

/// Path → methods: what a router serves or a document describes. `*` stands for a
/// route that takes any method.
pub type RouteTable = BTreeMap<String, BTreeSet<String>>;

/// Every route an axum router serves, read from its `Debug` output (axum has no
/// other way to list them). HEAD is left out: axum answers it for every GET.
///
/// For tests: it panics when axum's `Debug` output no longer has the shape it reads,
/// so that a changed axum fails the test instead of passing it with no routes.
pub fn served<S>(router: &axum::Router<S>) -> RouteTable {
    let debug = format!("{router:?}");
    let main = debug.split("fallback_router:").next().unwrap_or_default();
    let (routes, node) = main
        .split_once("node: Node { paths: {")
        .expect("axum's Router Debug lists its paths");
    let mut paths = HashMap::new();
    for entry in node.split("RouteId(").skip(1) {
        let (id, rest) = entry.split_once("): \"").expect("RouteId(n): \"path\"");
        let path = rest.split('"').next().unwrap_or_default();
        paths.insert(id.to_string(), path.to_string());
    }
    let mut out = BTreeMap::new();
    for entry in routes.split("RouteId(").skip(1) {
        let (id, rest) = entry.split_once(')').expect("RouteId(n)");
        let methods: BTreeSet<String> = match rest.split("allow_header: Bytes(b\"").nth(1) {
            Some(allow) => allow
                .split('"')
                .next()
                .unwrap_or_default()
                .split(',')
                .filter(|m| *m != "HEAD")
                .map(str::to_string)
                .collect(),
            None if rest.contains("fallback: BoxedHandler") => ["*".to_string()].into(),
            None => BTreeSet::new(),
        };
        let path = paths
            .get(id)
            .unwrap_or_else(|| panic!("route {id} has no path in {debug}"));
        out.insert(path.clone(), methods);
    }
    assert!(!out.is_empty(), "no routes read from {debug}");
    out
}

/// Path → methods `doc` describes.
pub fn documented(doc: &OpenApi) -> RouteTable {
    doc.paths
        .paths
        .iter()
        .map(|(path, item)| {
            let methods = [
                ("GET", &item.get),
                ("PUT", &item.put),
                ("POST", &item.post),
                ("DELETE", &item.delete),
                ("OPTIONS", &item.options),
                ("HEAD", &item.head),
                ("PATCH", &item.patch),
                ("TRACE", &item.trace),
            ]
            .into_iter()
            .filter(|(_, op)| op.is_some())
            .map(|(m, _)| m.to_string())
            .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// Where `served` and `doc` disagree: a route that takes any method must document
/// some, others exactly theirs, and nothing is documented that is not served.
pub fn mismatches(served: &RouteTable, doc: &OpenApi) -> Vec<String> {
    let described = documented(doc);
    let mut problems = Vec::new();
    for (path, methods) in served {
        match described.get(path) {
            None => problems.push(format!("{path} is served but not documented")),
            Some(documented) if methods.contains("*") && documented.is_empty() => {
                problems.push(format!("{path}: no operation documented"))
            }
            Some(documented) if !methods.contains("*") && methods != documented => problems.push(
                format!("{path}: serves {methods:?}, documents {documented:?}"),
            ),
            Some(_) => {}
        }
    }
    for path in described.keys() {
        if !served.contains_key(path) {
            problems.push(format!("{path} is documented but not served"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use axum::routing::{any, get, post};
    use utoipa::openapi::OpenApiBuilder;
    use utoipa::openapi::path::OperationBuilder;

    use super::*;

    /// A document describing `operations` (path, method).
    fn doc(operations: &[(&str, &str)]) -> OpenApi {
        let mut doc = OpenApiBuilder::new().build();
        for (path, method) in operations {
            let item = doc.paths.paths.entry((*path).to_string()).or_default();
            let slot = match *method {
                "GET" => &mut item.get,
                "POST" => &mut item.post,
                other => panic!("no {other} in this test"),
            };
            *slot = Some(OperationBuilder::new().build());
        }
        doc
    }

    #[test]
    fn reads_the_routes_a_router_serves() {
        let router: axum::Router = axum::Router::new()
            .route("/a/{id}", get(|| async {}).post(|| async {}))
            .route("/any", any(|| async {}))
            .fallback(|| async {});
        let served = served(&router);
        assert_eq!(served["/a/{id}"], ["GET", "POST"].map(String::from).into());
        assert_eq!(served["/any"], ["*".to_string()].into());
        assert_eq!(served.len(), 2, "{served:?}");
    }

    #[test]
    fn names_every_disagreement() {
        let router: axum::Router = axum::Router::new()
            .route("/a", get(|| async {}).post(|| async {}))
            .route("/b", post(|| async {}))
            .route("/any", any(|| async {}));
        let served = served(&router);
        let exact = doc(&[
            ("/a", "GET"),
            ("/a", "POST"),
            ("/b", "POST"),
            ("/any", "POST"),
        ]);
        assert_eq!(mismatches(&served, &exact), Vec::<String>::new());
        let wrong = doc(&[("/a", "GET"), ("/b", "GET"), ("/c", "GET")]);
        assert_eq!(
            mismatches(&served, &wrong),
            [
                "/a: serves {\"GET\", \"POST\"}, documents {\"GET\"}",
                "/any is served but not documented",
                "/b: serves {\"POST\"}, documents {\"GET\"}",
                "/c is documented but not served",
            ]
        );
    }

    #[test]
    fn serves_the_rendered_document_as_json() {
        let rendered = render(&doc(&[("/x", "GET")]));
        let json: serde_json::Value = serde_json::from_slice(&rendered).expect("JSON");
        assert!(json["paths"]["/x"]["get"].is_object(), "{json}");
        let response = json_response(&rendered);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }
}
