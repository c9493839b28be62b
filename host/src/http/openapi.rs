//! The OpenAPI 3.1 document of the HTTP API, built from the route table
//! ([`super::ROUTES`]) and the JSON types' schemas (utoipa). Served at
//! `/openapi.json` and kept in the repository as `docs/openapi.json`; a
//! test fails when the two differ or when a route is missing.

use super::problem::Problem;
use super::types::{
    AuditParams, CommandParams, IDEMPOTENCY_KEY_BYTES_MAX, OutcomeJson, PromoteJson, PromotingJson,
    QueryParams, ROUTES, ReadJson, WriteJson,
};
use utoipa::IntoParams;
use utoipa::OpenApi as _;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi, Paths, Ref, RefOr, Required, ResponseBuilder, Schema,
    Type,
};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Understudy HTTP API",
        description = "The actor message API of an Understudy node, in JSON. Errors are \
                       application/problem+json documents whose title is the CBOR API's error \
                       code. Writes sent to a follower are passed on to the leader.",
        license(name = "Apache-2.0")
    ),
    components(schemas(Problem, OutcomeJson, WriteJson, ReadJson, PromoteJson, PromotingJson))
)]
struct Components;

fn reference(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

fn object(description: &str) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(description))
            .build(),
    ))
}

fn json(schema: RefOr<Schema>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

/// One operation of the table: its summary, parameters, body and answers.
fn operation(method: &str, path: &str) -> utoipa::openapi::path::Operation {
    let problem = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content(super::problem::PROBLEM_JSON, json(reference("Problem")))
            .build()
    };
    let ok = |what: &str, schema: RefOr<Schema>| {
        ResponseBuilder::new()
            .description(what)
            .content("application/json", json(schema))
            .build()
    };
    let json_body = |what: &str, schema: RefOr<Schema>| {
        RequestBodyBuilder::new()
            .description(Some(what))
            .required(Some(Required::True))
            .content("application/json", json(schema))
            .build()
    };
    let actor = ParameterBuilder::new()
        .name("actor")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some("The actor's name (1 to 64 bytes)."))
        .schema(Some(RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(64))
                .build(),
        ))))
        .build();
    let idempotency = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "The same key (of the same user) is the same write: applied once, answered with \
             its first outcome from any node (1 to 128 bytes).",
        ))
        .schema(Some(RefOr::T(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(IDEMPOTENCY_KEY_BYTES_MAX))
                .build(),
        ))))
        .build();
    let op = OperationBuilder::new()
        .operation_id(Some(format!(
            "{}{}",
            method.to_lowercase(),
            path.replace(['/', '{', '}', '.'], "_")
        )))
        .response("400", problem("A malformed request"))
        .response(
            "401",
            problem("Not authenticated (a bearer token is needed)"),
        )
        .response("403", problem("Not allowed"))
        .response("404", problem("No such route or actor"))
        .response("405", problem("Not a method of this route"));
    let op = match (method, path) {
        ("GET", "/v1/status") => op.summary(Some("This node's status")).response(
            "200",
            ok(
                "The status",
                object("The node's status (see `understudy status`)"),
            ),
        ),
        ("PUT", "/v1/actors/{actor}") => op
            .summary(Some(
                "Deploy a machine (a component or core module) as an actor",
            ))
            .parameter(actor)
            .request_body(Some(
                RequestBodyBuilder::new()
                    .description(Some("The module's bytes (at most 8 MiB)"))
                    .required(Some(Required::True))
                    .content(
                        "application/wasm",
                        json(RefOr::T(Schema::Object(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                                    utoipa::openapi::KnownFormat::Binary,
                                )))
                                .build(),
                        ))),
                    )
                    .build(),
            ))
            .response("200", ok("Committed; its outcome", reference("WriteJson")))
            .response("413", problem("Over MODULE_BYTES_MAX"))
            .response("415", problem("Not application/wasm")),
        ("POST", "/v1/actors/{actor}/commands") => op
            .summary(Some("Send a command to an actor (through the log)"))
            .parameter(actor)
            .parameters(Some(CommandParams::into_params(|| {
                Some(ParameterIn::Query)
            })))
            .parameter(idempotency)
            .request_body(Some(json_body(
                "The command, as the machine reads it",
                object("Any JSON"),
            )))
            .response(
                "200",
                ok("Committed and applied; its outcome", reference("WriteJson")),
            )
            .response(
                "202",
                ok(
                    "Durable on the leader (concern `leader`)",
                    reference("WriteJson"),
                ),
            )
            .response("413", problem("Over a limit"))
            .response("415", problem("Not application/json")),
        ("POST", "/v1/actors/{actor}/queries") => op
            .summary(Some("Read from an actor's applied state"))
            .parameter(actor)
            .parameters(Some(QueryParams::into_params(|| Some(ParameterIn::Query))))
            .request_body(Some(json_body(
                "The query, as the machine reads it",
                object("Any JSON"),
            )))
            .response("200", ok("The machine's answer", reference("ReadJson")))
            .response("415", problem("Not application/json")),
        ("POST", "/v1/promote") => op
            .summary(Some("Hand leadership to a member (or force a promotion)"))
            .request_body(Some(json_body("Who is to lead", reference("PromoteJson"))))
            .response(
                "202",
                ok("A switchover has started", reference("PromotingJson")),
            )
            .response("415", problem("Not application/json")),
        ("GET", "/v1/members") => op
            .summary(Some("The configuration in effect on this node"))
            .response(
                "200",
                ok(
                    "The configuration and its index",
                    object("index, membership"),
                ),
            ),
        ("POST", "/v1/members") => op
            .summary(Some("Change the group's configuration (admin)"))
            .parameter(idempotency)
            .request_body(Some(json_body(
                "A change: {\"Add\": {\"id\", \"addrs\": {\"peer\", \"client\"}, \"voter\"}}, \
                 {\"Remove\": {\"id\"}}, {\"Promote\": {\"id\"}}, {\"Replace\": {\"out\", \"id\", \
                 \"addrs\"}}, …",
                object("A membership change"),
            )))
            .response(
                "200",
                ok(
                    "Done; the index of the configuration",
                    object("state, term, index"),
                ),
            )
            .response("415", problem("Not application/json")),
        ("GET", "/v1/auth") => op
            .summary(Some("The auth state (admin; token hashes left out)"))
            .response(
                "200",
                ok("The auth state", object("users, roles, tokens, modules")),
            ),
        ("POST", "/v1/auth") => op
            .summary(Some("Change the auth state through the log (admin)"))
            .request_body(Some(json_body("An auth change", object("An auth request"))))
            .response(
                "200",
                ok(
                    "Done (a new token is shown this once)",
                    object("state, term, index"),
                ),
            )
            .response("415", problem("Not application/json")),
        ("GET", "/v1/audit") => op
            .summary(Some("The audit trail, newest first (admin)"))
            .parameters(Some(AuditParams::into_params(|| Some(ParameterIn::Query))))
            .response("200", ok("Audit records", object("records"))),
        ("GET", "/metrics") => op
            .summary(Some("This node's metrics (Prometheus text format 0.0.4)"))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The metrics")
                    .content(
                        "text/plain",
                        json(RefOr::T(Schema::Object(
                            ObjectBuilder::new().schema_type(Type::String).build(),
                        ))),
                    )
                    .build(),
            ),
        ("GET", "/v1/cluster") => op
            .summary(Some("Every member's status, as this node reaches them"))
            .response(
                "200",
                ok(
                    "this, cluster_id, membership, members: [{id, address, status, error}]",
                    object("The cluster view"),
                ),
            ),
        ("GET", "/") => op.summary(Some("The live cluster page (HTML)")).response(
            "200",
            ResponseBuilder::new()
                .description("The page")
                .content(
                    "text/html",
                    json(RefOr::T(Schema::Object(
                        ObjectBuilder::new().schema_type(Type::String).build(),
                    ))),
                )
                .build(),
        ),
        ("GET", "/openapi.json") => op
            .summary(Some("This document"))
            .response("200", ok("The OpenAPI document", object("OpenAPI 3.1"))),
        _ => op,
    };
    op.build()
}

fn http_method(method: &str) -> HttpMethod {
    match method {
        "GET" => HttpMethod::Get,
        "PUT" => HttpMethod::Put,
        _ => HttpMethod::Post,
    }
}

/// The document.
pub fn spec() -> OpenApi {
    let mut doc = Components::openapi();
    let mut paths = Paths::new();
    for &(method, path) in ROUTES {
        paths.add_path_operation(path, vec![http_method(method)], operation(method, path));
    }
    doc.paths = paths;
    doc
}

/// The document as pretty JSON (what `/openapi.json` serves).
pub fn document() -> String {
    spec()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the router is an operation of the document, and the
    /// document has no other.
    #[test]
    fn the_document_has_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        routes.sort();
        assert_eq!(documented, routes);
    }

    /// `docs/openapi.json` is the document this build serves (regenerate
    /// with `UNDERSTUDY_WRITE_OPENAPI=1 cargo test -p understudy --lib
    /// openapi`).
    #[test]
    fn the_document_in_the_repository_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let now = document();
        if std::env::var("UNDERSTUDY_WRITE_OPENAPI").is_ok() {
            std::fs::write(&path, &now).unwrap();
        }
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            kept == now,
            "docs/openapi.json is not the document this build serves: regenerate it with \
             UNDERSTUDY_WRITE_OPENAPI=1 cargo test -p understudy --lib openapi"
        );
    }
}
