//! The OpenAPI 3.1 documents of the public and the admin API, served at
//! `/openapi.json` on each listener.
//!
//! Both are generated from the handlers' own types and `#[utoipa::path]`
//! annotations, and each router is built from the same table as its document
//! (`utoipa_axum::routes!`), so a route cannot be served without being described.
//! A document is rendered once, the first time it is asked for.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::response::Response;
use tern_core::openapi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

use crate::error::ErrorBody;

/// `Idempotency-Key` of task submissions.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyKeyHeader {
    /// The same key (per tenant, kept `ingress.idempotency_ttl`) with the same request
    /// returns the first response; with a different one it is `409`.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = r"^[!-~]{1,255}$"
    )]
    #[allow(dead_code)]
    idempotency_key: Option<String>,
}

/// W3C `traceparent`: the task joins the client's trace.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct TraceparentHeader {
    /// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; an invalid one starts a
    /// new trace.
    #[param(rename = "traceparent")]
    #[allow(dead_code)]
    traceparent: Option<String>,
}

/// The public API's document, before the routes are added.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tern API",
        description = "Asynchronous HTTP work: webhook tasks, proxied calls, schedules and queue policies. Every call takes `Authorization: Bearer <api key>`; every error is `{\"error\":{\"code\",\"message\"}}`.",
        license(name = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    security(("api_key" = [])),
    tags(
        (name = "tasks", description = "Webhook tasks and their status"),
        (name = "proxy", description = "Proxied calls (X-Target-URL, X-Route-Key)"),
        (name = "routes", description = "Cascades of upstreams for proxied calls"),
        (name = "schedules", description = "Recurring schedules"),
        (name = "queues", description = "Per-queue retry policies and dispatch limits"),
        (name = "meta", description = "This document"),
    ),
)]
pub struct PublicDoc;

/// The admin API's document, before the routes are added.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tern admin API",
        description = "Dead letters and disabled endpoints, on the admin listener (`ingress.admin_listen`). Every call takes `Authorization: Bearer <ingress.admin_token>`; every error is `{\"error\":{\"code\",\"message\"}}`.",
        license(name = "Apache-2.0"),
    ),
    components(schemas(ErrorBody)),
    security(("admin_token" = [])),
    tags(
        (name = "dlq", description = "The dead-letter queue"),
        (name = "endpoints", description = "Endpoints disabled by a 410 Gone"),
        (name = "meta", description = "This document"),
    ),
)]
pub struct AdminDoc;

/// Errors any authenticated operation of the public API can answer.
const PUBLIC_ERRORS: &[(u16, &str)] = &[
    (401, "No or unknown API key"),
    (
        429,
        "The API key used up its rate; `Retry-After` says when to come back",
    ),
    (
        503,
        "NATS cannot take the work (or the proxy API is not enabled); nothing was stored",
    ),
];

/// Errors any operation of the admin API can answer.
const ADMIN_ERRORS: &[(u16, &str)] = &[
    (
        401,
        "No or wrong admin token (or the admin API is disabled)",
    ),
    (503, "NATS did not answer"),
];

/// Adds the bearer scheme `name` and the `errors` every authenticated operation can
/// answer, so each operation lists only what is its own.
fn finish(mut doc: OpenApi, scheme: &str, token: &str, errors: &[(u16, &str)]) -> OpenApi {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        scheme,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(format!("Authorization: Bearer <{token}>")))
                .build(),
        ),
    );
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            // An operation with `security(())` (this document) needs no credentials.
            if operation.security.is_some() {
                continue;
            }
            for (status, description) in errors {
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_response(description));
            }
        }
    }
    doc
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .into()
}

/// The public API's document.
pub fn public() -> OpenApi {
    finish(
        crate::public_api().into_openapi(),
        "api_key",
        "api key",
        PUBLIC_ERRORS,
    )
}

/// The admin API's document.
pub fn admin() -> OpenApi {
    finish(
        crate::admin::api().into_openapi(),
        "admin_token",
        "ingress.admin_token",
        ADMIN_ERRORS,
    )
}

static PUBLIC_JSON: LazyLock<Bytes> = LazyLock::new(|| openapi::render(&public()));
static ADMIN_JSON: LazyLock<Bytes> = LazyLock::new(|| openapi::render(&admin()));

/// `GET /openapi.json` on the public listener.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    summary = "This OpenAPI document",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of the public API", content_type = "application/json", body = Object)),
)]
pub async fn public_document() -> Response {
    openapi::json_response(&PUBLIC_JSON)
}

/// `GET /openapi.json` on the admin listener.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    summary = "This OpenAPI document",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of the admin API", content_type = "application/json", body = Object)),
)]
pub async fn admin_document() -> Response {
    openapi::json_response(&ADMIN_JSON)
}

#[cfg(test)]
mod tests {
    use tern_core::openapi::mismatches;

    use super::*;

    #[test]
    fn every_public_route_is_documented() {
        let served = openapi::served(&crate::public_api().split_for_parts().0);
        assert!(served.contains_key("/v1/tasks") && served["/v1/proxy"].contains("*"));
        assert_eq!(mismatches(&served, &public()), Vec::<String>::new());
    }

    #[test]
    fn every_admin_route_is_documented() {
        let served = openapi::served(&crate::admin::api().split_for_parts().0);
        assert!(served.contains_key("/admin/v1/dlq"));
        assert_eq!(mismatches(&served, &admin()), Vec::<String>::new());
    }

    #[test]
    fn a_route_added_beside_the_table_is_caught() {
        let router = crate::public_api()
            .split_for_parts()
            .0
            .route("/v1/undocumented", axum::routing::get(|| async {}))
            .route("/v1/queues", axum::routing::post(|| async {}));
        let problems = mismatches(&openapi::served(&router), &public());
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn documents_are_openapi_3_1_with_errors_auth_and_headers() {
        for (doc, scheme) in [(public(), "api_key"), (admin(), "admin_token")] {
            let json: serde_json::Value = serde_json::from_slice(&openapi::render(&doc)).unwrap();
            assert!(json["openapi"].as_str().unwrap().starts_with("3.1"));
            assert_eq!(
                json["components"]["securitySchemes"][scheme]["scheme"],
                "bearer"
            );
            assert_eq!(json["security"][0][scheme], serde_json::json!([]));
            let error = &json["components"]["schemas"]["ErrorBody"];
            assert_eq!(error["required"], serde_json::json!(["error"]));
            for (path, item) in json["paths"].as_object().unwrap() {
                for (method, op) in item.as_object().unwrap() {
                    let responses = op["responses"].as_object().unwrap();
                    assert!(
                        responses.keys().any(|s| s.starts_with('2')),
                        "{method} {path}: no success response"
                    );
                    if path != "/openapi.json" {
                        assert!(responses.contains_key("401"), "{method} {path}: no 401");
                    }
                }
            }
        }
        let json: serde_json::Value = serde_json::from_slice(&PUBLIC_JSON).unwrap();
        let header_names = |path: &str, method: &str| -> Vec<String> {
            json["paths"][path][method]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "header")
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert!(header_names("/v1/tasks", "post").contains(&"Idempotency-Key".into()));
        assert!(header_names("/v1/tasks/raw", "post").contains(&"Idempotency-Key".into()));
        let proxy = header_names("/v1/proxy", "post");
        for name in [
            "X-Target-URL",
            "X-Route-Key",
            "X-Webhook-Callback",
            "X-Retry-Count",
            "X-Retry-Delay",
            "X-Proxy-Timeout",
            "X-Identity-Key",
            "X-Proxy-Idempotency-Key",
        ] {
            assert!(proxy.contains(&name.to_string()), "{name}");
        }
        assert_eq!(
            json["paths"]["/v1/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/TaskRequest"
        );
    }
}
