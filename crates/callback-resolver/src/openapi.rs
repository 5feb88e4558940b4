//! The callback resolver's OpenAPI 3.1 document, served at `/openapi.json` on its
//! public listener.
//!
//! Generated from the handler's own types and `#[utoipa::path]` annotation, and the
//! router is built from the same table as the document (`utoipa_axum::routes!`), as
//! the ingress does for its APIs; the shared parts are in `tern_core::openapi`. Its
//! errors are the resolver's own `{"error":"<message>"}`.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::response::Response;
use tern_core::openapi;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::resolve::{self, CallbackError, ResolverState};

/// The document, before the routes are added.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tern callback resolver",
        description = "Where providers answer await-callback tasks: `POST` to the task's `callback_url`. No API key (the callback id is the credential); every error is `{\"error\":\"<message>\"}`.",
        license(name = "Apache-2.0"),
    ),
    components(schemas(CallbackError)),
    tags(
        (name = "callbacks", description = "Providers' answers to await-callback tasks"),
        (name = "meta", description = "This document"),
    ),
)]
struct ResolverDoc;

/// The served routes and their document, from one table.
pub fn api() -> OpenApiRouter<ResolverState> {
    OpenApiRouter::with_openapi(ResolverDoc::openapi())
        .routes(routes!(resolve::resolve))
        .routes(routes!(document))
}

/// The resolver's document.
pub fn doc() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

static JSON: LazyLock<Bytes> = LazyLock::new(|| openapi::render(&doc()));

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document of the callback resolver", content_type = "application/json", body = Object)),
)]
pub async fn document() -> Response {
    openapi::json_response(&JSON)
}

#[cfg(test)]
mod tests {
    use tern_core::openapi::{mismatches, served};

    use super::*;

    #[test]
    fn every_route_is_documented() {
        let served = served(&api().split_for_parts().0);
        assert!(served.contains_key("/v1/callbacks/{id}"), "{served:?}");
        assert_eq!(mismatches(&served, &doc()), Vec::<String>::new());
    }

    #[test]
    fn a_route_added_beside_the_table_is_caught() {
        let router = api()
            .split_for_parts()
            .0
            .route("/v1/callbacks/{id}/status", axum::routing::get(|| async {}));
        let problems = mismatches(&served(&router), &doc());
        assert_eq!(
            problems,
            ["/v1/callbacks/{id}/status is served but not documented"]
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_answer() {
        let json: serde_json::Value = serde_json::from_slice(&JSON).expect("JSON");
        assert!(
            json["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        assert!(json.get("security").is_none(), "no credentials: {json}");
        let op = &json["paths"]["/v1/callbacks/{id}"]["post"];
        let id = &op["parameters"][0];
        assert_eq!((&id["name"], &id["in"]), (&"id".into(), &"path".into()));
        assert_eq!(id["schema"]["pattern"], "^[0-9A-Fa-f]{64}$");
        let codes: Vec<&str> = op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(codes, ["200", "400", "404", "409", "413", "429", "503"]);
        for code in &codes[1..] {
            assert_eq!(
                op["responses"][code]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/CallbackError",
                "{code}"
            );
        }
        let error = &json["components"]["schemas"]["CallbackError"];
        assert_eq!(error["required"], serde_json::json!(["error"]));
        let task = &json["components"]["schemas"]["ResolvedTask"];
        for field in ["id", "status", "result", "createdAt", "completedAt"] {
            assert!(task["properties"].get(field).is_some(), "{field}: {task}");
        }
        assert!(
            op["requestBody"]["content"]["application/json"].is_object(),
            "{op}"
        );
    }
}
