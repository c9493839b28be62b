//! The HTTP/JSON face of a node (`--http-listen`, actix-web): the actor
//! message API's requests as routes, JSON in and out, errors as problem
//! documents ([`problem`]), the OpenAPI document at `/openapi.json`
//! ([`openapi`]).
//!
//! Every route becomes the same [`Request`] the CBOR port takes and goes
//! through the same checks (auth, limits) to the node actor; answers are
//! the same, in JSON. Commands and queries are JSON documents, turned into
//! the CBOR the machines read (and their CBOR answers back into JSON).
//!
//! **A write sent to a follower is proxied to the leader**, not
//! redirected: the configuration knows every member's client address but
//! not its HTTP address, and a client behind a load balancer would have
//! nowhere to follow a redirect to. The follower passes the caller's
//! bearer token on, so the leader checks the caller, not the follower; a
//! caller known by a client certificate only cannot be passed on (the
//! follower does not hold its key) and gets `421 NotLeader` naming the
//! leader's client address.

pub mod openapi;
pub mod problem;
mod types;

pub use types::*;

use crate::access::AuthView;
use crate::api::client::{Client, ClientOptions};
use crate::api::{ErrorCode, MembershipChange, ReadLevel, Request, Response, WriteConcern};
use crate::auth::Principal;
use crate::node::{ClientCall, Node};
use crate::types::{ClientTag, Outcome};
use actix::Addr;
use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use problem::Problem;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What every handler shares.
#[derive(Clone)]
pub struct Shared {
    node: Addr<Node>,
    metrics: Arc<crate::metrics::Metrics>,
    auth: AuthView,
    tls: bool,
    answer_within: Duration,
    proxy: Arc<Proxy>,
}

/// Connections to leaders, for writes sent to a follower: one per leader
/// address and caller token.
struct Proxy {
    options: ClientOptions,
    clients: Mutex<HashMap<ProxyKey, Arc<Client>>>,
}

type ProxyKey = (SocketAddr, Option<String>);

/// A started HTTP server: its bound address.
pub struct Serving {
    /// The address it listens on.
    pub addr: SocketAddr,
}

/// Serve the HTTP API of a started node at its configuration's
/// `http_listen`, if it has one (inside the current actix system): the
/// bound address.
pub fn start(
    config: &crate::node::NodeConfig,
    running: &crate::node::Running,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = config.http_listen else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("binding the HTTP address {addr}: {e}"))?;
    // A follower passes writes on over the leader's client port, as a
    // client that trusts the members' CA (the caller's token rides along).
    let proxy_options = ClientOptions {
        tls: match &config.tls {
            Some(t) => Some(crate::tls::ClientTls::load(&t.peer_ca, None)?),
            None => None,
        },
        ..Default::default()
    };
    let answer_within = Duration::from_millis(
        config
            .write_timeout_ms
            .max(config.read_timeout_ms)
            .max(config.module_compile_timeout_ms),
    );
    let serving = serve(
        listener,
        running.node.clone(),
        running.metrics.clone(),
        running.auth.clone(),
        running
            .tls
            .as_ref()
            .map(|t| t.client_acceptor.config().clone()),
        proxy_options,
        answer_within,
    )?;
    Ok(Some(serving.addr))
}

/// Serve the HTTP API on `listener` for `node` (inside the current actix
/// system; the server runs on worker threads of its own). `tls`: the
/// node's client-port TLS (the same certificate; the same client CA), and
/// the options this node uses to pass writes on to a leader.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    listener: std::net::TcpListener,
    node: Addr<Node>,
    metrics: Arc<crate::metrics::Metrics>,
    auth: AuthView,
    tls: Option<Arc<rustls::ServerConfig>>,
    proxy_options: ClientOptions,
    answer_within: Duration,
) -> anyhow::Result<Serving> {
    let addr = listener.local_addr()?;
    let shared = Shared {
        node,
        metrics,
        auth,
        tls: tls.is_some(),
        answer_within: answer_within + Duration::from_millis(ANSWER_SLACK_MS),
        proxy: Arc::new(Proxy {
            options: proxy_options,
            clients: Mutex::new(HashMap::new()),
        }),
    };
    let app = move || {
        let mut app = actix_web::App::new()
            .wrap(actix_web::middleware::ErrorHandlers::new().default_handler(as_problem))
            .app_data(web::Data::new(shared.clone()))
            .app_data(web::PayloadConfig::new(
                crate::limits::MODULE_BYTES_MAX.max(HTTP_JSON_BODY_BYTES_MAX),
            ))
            .default_service(web::to(not_found));
        // One resource per path, with a route per method (a second
        // resource of the same path would never be reached).
        let mut paths: Vec<&'static str> = Vec::new();
        for (_, p) in ROUTES {
            if !paths.contains(p) {
                paths.push(p);
            }
        }
        for path in paths {
            let mut resource =
                web::resource(actix_path(path)).default_service(web::to(method_not_allowed));
            for &(method, _) in ROUTES.iter().filter(|(_, p)| *p == path) {
                let route = match method {
                    "GET" => web::get(),
                    "PUT" => web::put(),
                    _ => web::post(),
                };
                resource = resource.route(route.to(move |req: HttpRequest, body: web::Bytes| {
                    dispatch(method, path, req, body)
                }));
            }
            app = app.service(resource);
        }
        app
    };
    let server = actix_web::HttpServer::new(app)
        .workers(2)
        .disable_signals()
        .client_request_timeout(Duration::from_secs(10))
        .on_connect(tls_principal);
    let server = match tls {
        Some(config) => server.listen_rustls_0_23(listener, (*config).clone())?,
        None => server.listen(listener)?,
    };
    actix::spawn(async move {
        if let Err(e) = server.run().await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    Ok(Serving { addr })
}

/// An error answer actix-web made itself (a body past the server's limit,
/// a payload that broke off) becomes a problem document with its status;
/// ours already are.
fn as_problem<B>(
    res: actix_web::dev::ServiceResponse<B>,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == problem::PROBLEM_JSON.as_bytes());
    if is_problem {
        return Ok(actix_web::middleware::ErrorHandlerResponse::Response(
            res.map_into_left_body(),
        ));
    }
    let status = res.status();
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the body is over the server's limit of {} bytes (MODULE_BYTES_MAX)",
            crate::limits::MODULE_BYTES_MAX
        ),
        _ => status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_string(),
    };
    let title = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "TooLarge",
        s if s.is_server_error() => "Unavailable",
        _ => "BadRequest",
    };
    let (req, _) = res.into_parts();
    let answer = Problem::new(status, title, detail).response();
    Ok(actix_web::middleware::ErrorHandlerResponse::Response(
        actix_web::dev::ServiceResponse::new(req, answer).map_into_right_body(),
    ))
}

/// `{actor}` in OpenAPI is `{actor}` in actix too; kept as a function in
/// case the two syntaxes part.
fn actix_path(path: &str) -> String {
    path.to_string()
}

/// The user a TLS client certificate names, put on the connection.
fn tls_principal(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    let Some(stream) = conn.downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>() else {
        return;
    };
    let certs = stream.get_ref().1.peer_certificates();
    let fingerprint = certs
        .and_then(|c| c.first())
        .map(|der| crate::access::fingerprint(der));
    match crate::tls::peer_identity(certs) {
        Some(Ok(crate::tls::CertIdentity::User(user))) => {
            ext.insert(CertPrincipal(Principal {
                user,
                token: None,
                cert: fingerprint,
            }));
        }
        Some(Ok(other)) => {
            ext.insert(CertRefused(format!(
                "the client certificate names {other}: node certificates are not valid on the \
                 client ports"
            )));
        }
        Some(Err(e)) => {
            ext.insert(CertRefused(format!("bad client certificate: {e}")));
        }
        None => {}
    }
}

#[derive(Clone)]
struct CertPrincipal(Principal);
#[derive(Clone)]
struct CertRefused(String);

async fn not_found(req: HttpRequest) -> HttpResponse {
    Problem::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "no route {} {}: see /openapi.json for the routes",
            req.method(),
            req.path()
        ),
    )
    .response()
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|(_, p)| route_matches(p, req.path()))
        .map(|(m, _)| *m)
        .collect();
    let mut r = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!(
            "{} is not a method of {} (it takes {})",
            req.method(),
            req.path(),
            allowed.join(", ")
        ),
    )
    .response();
    if let Ok(v) = header::HeaderValue::from_str(&allowed.join(", ")) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// Whether a concrete path fits a route's template.
fn route_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(a, b)| a == b || (a.starts_with('{') && !b.is_empty()))
}

async fn dispatch(
    method: &'static str,
    path: &'static str,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let started = std::time::Instant::now();
    let shared = req
        .app_data::<web::Data<Shared>>()
        .expect("the app has its shared state")
        .clone();
    let result = match (method, path) {
        ("GET", "/openapi.json") => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(openapi::document())),
        ("GET", "/v1/status") => status(&shared, &req).await,
        ("PUT", "/v1/actors/{actor}") => deploy(&shared, &req, body).await,
        ("POST", "/v1/actors/{actor}/commands") => command(&shared, &req, body).await,
        ("POST", "/v1/actors/{actor}/queries") => query(&shared, &req, body).await,
        ("POST", "/v1/promote") => promote(&shared, &req, body).await,
        ("GET", "/v1/members") => members(&shared, &req).await,
        ("POST", "/v1/members") => change_members(&shared, &req, body).await,
        ("GET", "/v1/auth") => auth_show(&shared, &req).await,
        ("POST", "/v1/auth") => auth_change(&shared, &req, body).await,
        ("GET", "/v1/audit") => audit(&shared, &req).await,
        ("GET", "/metrics") => metrics(&shared, &req).await,
        ("GET", "/v1/cluster") => cluster(&shared, &req).await,
        ("GET", "/") => Ok(HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header(("Cache-Control", "no-store"))
            .body(PAGE)),
        _ => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route {method} {path}"),
        )),
    };
    let answer = result.unwrap_or_else(|p| p.response());
    let refused = (answer.status().is_client_error() || answer.status().is_server_error())
        .then(|| answer.status().as_u16().to_string());
    shared.metrics.request(
        route_kind(method, path),
        "http",
        started.elapsed().as_secs_f64(),
        refused,
    );
    tracing::debug!(
        method,
        path = req.path(),
        status = answer.status().as_u16(),
        peer = ?req.peer_addr(),
        "HTTP request"
    );
    answer
}

/// The kind of a route's request, for the metrics.
fn route_kind(method: &str, path: &str) -> &'static str {
    match (method, path) {
        ("POST", "/v1/actors/{actor}/commands") => "command",
        ("POST", "/v1/actors/{actor}/queries") => "query",
        ("PUT", "/v1/actors/{actor}") => "deploy",
        ("GET", "/v1/status") => "status",
        ("GET", "/metrics") => "metrics",
        ("GET", "/v1/cluster") => "status",
        ("GET", "/") => "page",
        ("GET", "/openapi.json") => "openapi",
        _ => "admin",
    }
}

/// The live cluster page (no build step, no external assets): it polls
/// `/v1/cluster`.
const PAGE: &str = include_str!("page.html");

/// Every member's status, as this node reaches them (each within
/// `CLUSTER_STATUS_TIMEOUT_MS`, in parallel, over the client port with the
/// caller's token): what the cluster page draws.
async fn cluster(shared: &Shared, req: &HttpRequest) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    let own = own_status(shared, &caller).await?;
    let mut ids = own.membership.members();
    ids.insert(own.node_id);
    let within = Duration::from_millis(CLUSTER_STATUS_TIMEOUT_MS);
    let asks = ids.into_iter().map(|id| {
        let address = own
            .membership
            .addrs
            .get(&id)
            .map(|a| a.client.clone())
            .filter(|a| !a.is_empty())
            .or_else(|| own.client_addresses.get(&id).cloned());
        let own = (id == own.node_id).then(|| own.clone());
        let token = caller.token.clone();
        let proxy = shared.proxy.clone();
        async move {
            let resolved = match (&own, address.as_deref()) {
                (None, Some(a)) => crate::net::resolve(a).await,
                _ => None,
            };
            let status = match (own, resolved) {
                (Some(s), _) => Ok(*s),
                (None, Some(addr)) => {
                    match tokio::time::timeout(within, proxy.pass_on(addr, token, Request::Status))
                        .await
                    {
                        Ok(Ok(Response::Status(s))) => Ok(*s),
                        Ok(Ok(other)) => Err(format!("answered {other:?}")),
                        Ok(Err(p)) => Err(p.detail),
                        Err(_) => Err(format!(
                            "no answer within CLUSTER_STATUS_TIMEOUT_MS = {} ms",
                            within.as_millis()
                        )),
                    }
                }
                (None, None) => Err(match &address {
                    Some(a) => format!("its client address {a} does not resolve"),
                    None => "no client address known for it".to_string(),
                }),
            };
            let (status, error) = match status {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            };
            serde_json::json!({
                "id": id,
                "address": address,
                "status": status,
                "error": error,
            })
        }
    });
    let members = futures::future::join_all(asks).await;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "this": own.node_id,
        "cluster_id": own.cluster_id,
        "membership": own.membership,
        "membership_index": own.membership_index,
        "members": members,
    })))
}

/// The node's metrics, gauges set from its status now (the same check as
/// a status: any known user once auth is on).
async fn metrics(shared: &Shared, req: &HttpRequest) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    shared.metrics.observe(&*own_status(shared, &caller).await?);
    Ok(HttpResponse::Ok()
        .content_type(crate::metrics::PROMETHEUS_TEXT)
        .body(shared.metrics.encode()))
}

/// Who the caller is: a bearer token (it outranks a certificate, as on
/// the CBOR port), else the user its TLS client certificate names.
fn caller(shared: &Shared, req: &HttpRequest) -> Result<Caller, Problem> {
    let unauthenticated =
        |why: String| Problem::new(StatusCode::UNAUTHORIZED, "Unauthenticated", why);
    if let Some(refused) = req.conn_data::<CertRefused>() {
        return Err(unauthenticated(refused.0.clone()));
    }
    let token = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let text = v
                .to_str()
                .ok()
                .and_then(|t| t.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    unauthenticated(
                        "the Authorization header takes `Bearer <token>` (a token of `understudy \
                         auth token create`)"
                            .into(),
                    )
                })?;
            Some(text.trim().to_string())
        }
    };
    let principal = match &token {
        Some(t) => Some(
            crate::access::verify_token(&shared.auth.get(), t, now_ms())
                .map_err(|d| unauthenticated(d.to_string()))?,
        ),
        None => req.conn_data::<CertPrincipal>().map(|c| c.0.clone()),
    };
    let client = req
        .peer_addr()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    Ok(Caller {
        principal,
        token,
        span: crate::node::server::request_span(client),
    })
}

struct Caller {
    principal: Option<Principal>,
    token: Option<String>,
    span: tracing::Span,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Ask the node, as `caller`, after the same checks as the CBOR port.
async fn ask(shared: &Shared, caller: &Caller, request: Request) -> Result<Response, Problem> {
    crate::node::server::allowed(
        &shared.auth.get(),
        shared.tls,
        caller.principal.as_ref(),
        &request,
        now_ms(),
    )
    .map_err(Problem::from)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    shared.node.do_send(ClientCall {
        request,
        reply,
        by: caller.principal.clone(),
        span: caller.span.clone(),
    });
    match tokio::time::timeout(shared.answer_within, answer).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(_)) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Unavailable",
            "the node dropped the request",
        )),
        Err(_) => Err(Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!(
                "the node did not answer within {} ms",
                shared.answer_within.as_millis()
            ),
        )),
    }
}

/// A write: asked of this node, and passed on to the leader if this node
/// does not lead (see the module's docs).
async fn write(shared: &Shared, caller: &Caller, request: Request) -> Result<Response, Problem> {
    match ask(shared, caller, request.clone()).await? {
        Response::Error(e) if e.code == ErrorCode::NotLeader => {
            let leader = match e.leader_address.as_deref() {
                Some(a) => crate::net::resolve(a).await,
                None => None,
            };
            match leader {
                Some(addr) if caller.token.is_some() || caller.principal.is_none() => {
                    shared
                        .proxy
                        .pass_on(addr, caller.token.clone(), request)
                        .await
                }
                _ => Err(Problem::from(e)),
            }
        }
        Response::Error(e) => Err(Problem::from(e)),
        other => Ok(other),
    }
}

impl Proxy {
    async fn pass_on(
        &self,
        leader: SocketAddr,
        token: Option<String>,
        request: Request,
    ) -> Result<Response, Problem> {
        let key = (leader, token.clone());
        let cached = self.clients.lock().expect("proxy lock").get(&key).cloned();
        let client = match cached {
            Some(c) => c,
            None => {
                let options = ClientOptions {
                    token,
                    ..self.options.clone()
                };
                let c = Client::connect_node_with(leader, options)
                    .await
                    .map_err(|e| {
                        Problem::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "Unavailable",
                            format!(
                                "this node does not lead and cannot reach leader {leader}: {e}"
                            ),
                        )
                    })?;
                let c = Arc::new(c);
                remember(
                    &mut self.clients.lock().expect("proxy lock"),
                    key.clone(),
                    c.clone(),
                    PROXY_CONNECTIONS_MAX,
                );
                c
            }
        };
        match client.call(request).await {
            Ok(Response::Error(e)) => Err(Problem::from(e)),
            Ok(r) => Ok(r),
            Err(e) => {
                self.clients.lock().expect("proxy lock").remove(&key);
                Err(match e.code() {
                    Some(code) => Problem::new(
                        Problem::status_of(code),
                        &format!("{code:?}"),
                        e.to_string(),
                    ),
                    None => Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Unavailable",
                        format!("passing the write on to leader {leader} failed: {e}"),
                    ),
                })
            }
        }
    }
}

/// Keep `value` under `key` in a map of at most `max` entries: when it is
/// full, everything in it goes first (connections are cheap to open again,
/// and a full map means callers come and go).
fn remember<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V, max: usize) {
    if map.len() >= max && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, value);
}

fn actor_of(req: &HttpRequest) -> Result<String, Problem> {
    let actor = req.match_info().get("actor").unwrap_or_default();
    if actor.is_empty() || actor.len() > crate::limits::ACTOR_NAME_MAX_BYTES {
        return Err(Problem::bad_request(format!(
            "an actor name is 1 to ACTOR_NAME_MAX_BYTES = {} bytes",
            crate::limits::ACTOR_NAME_MAX_BYTES
        )));
    }
    Ok(actor.to_string())
}

/// The body as JSON, after checking its media type and size.
fn json_body<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    body: &[u8],
    what: &str,
) -> Result<T, Problem> {
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = media.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("{what} is application/json, not {media:?}"),
        ));
    }
    if body.len() > HTTP_JSON_BODY_BYTES_MAX {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TooLarge",
            format!(
                "{what} is {} bytes, over HTTP_JSON_BODY_BYTES_MAX = {HTTP_JSON_BODY_BYTES_MAX}",
                body.len()
            ),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("{what} is not valid JSON of its kind: {e}")))
}

/// The query string, parsed.
fn query_params<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, Problem> {
    web::Query::<T>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .map_err(|e| Problem::bad_request(format!("bad query string: {e}")))
}

/// A machine's CBOR answer as JSON (bytes become arrays of numbers; a map
/// whose keys are not text is given as its CBOR in hex).
fn json_of_cbor(bytes: &[u8]) -> serde_json::Value {
    match serde_cbor::from_slice::<serde_cbor::Value>(bytes)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
    {
        Some(v) => v,
        None => serde_json::json!({ "cbor_hex": hex(bytes) }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn outcome_json(actor: &str, outcome: &Outcome) -> Result<OutcomeJson, Problem> {
    let plain = |outcome: &str, message: String| OutcomeJson {
        outcome: outcome.into(),
        value: None,
        code: None,
        message: Some(message),
    };
    Ok(match outcome {
        Outcome::Ok(bytes) => OutcomeJson {
            outcome: "ok".into(),
            value: Some(json_of_cbor(bytes)),
            code: None,
            message: None,
        },
        Outcome::Refused { code, message } => OutcomeJson {
            outcome: "refused".into(),
            value: None,
            code: Some(code.clone()),
            message: Some(message.clone()),
        },
        Outcome::Trapped { trap } => plain(
            "trapped",
            format!("the machine trapped ({trap}); its writes were rolled back"),
        ),
        Outcome::OutOfFuel => plain(
            "out_of_fuel",
            "the machine ran out of fuel; its writes were rolled back".into(),
        ),
        Outcome::MemoryLimit => plain(
            "memory_limit",
            "the machine hit its memory limit; its writes were rolled back".into(),
        ),
        Outcome::DeployRefused { reason } => plain("deploy_refused", reason.clone()),
        Outcome::Denied { reason } => plain("denied", reason.clone()),
        // Worded as a query's refusal is (`QueryError::NoSuchActor`).
        Outcome::NoSuchActor => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "NoSuchActor",
                format!("no actor named {actor:?}"),
            ));
        }
    })
}

fn write_json(actor: &str, response: Response) -> Result<HttpResponse, Problem> {
    match response {
        Response::Written {
            outcome,
            term,
            index,
        } => Ok(HttpResponse::Ok().json(WriteJson {
            outcome: Some(outcome_json(actor, &outcome)?),
            state: "written".into(),
            term,
            index,
        })),
        Response::Accepted { term, index } => Ok(HttpResponse::Accepted().json(WriteJson {
            outcome: None,
            state: "accepted".into(),
            term,
            index,
        })),
        other => Err(unexpected(other)),
    }
}

fn unexpected(r: Response) -> Problem {
    match r {
        Response::Error(e) => Problem::from(e),
        other => Problem::new(
            StatusCode::BAD_GATEWAY,
            "Unexpected",
            format!("the node answered {other:?}"),
        ),
    }
}

/// This node's status, as `caller` may see it.
async fn own_status(shared: &Shared, caller: &Caller) -> Result<Box<crate::api::Status>, Problem> {
    match ask(shared, caller, Request::Status).await? {
        Response::Status(s) => Ok(s),
        other => Err(unexpected(other)),
    }
}

async fn status(shared: &Shared, req: &HttpRequest) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    Ok(HttpResponse::Ok().json(own_status(shared, &caller).await?))
}

async fn deploy(
    shared: &Shared,
    req: &HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    let actor = actor_of(req)?;
    let media = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = media.split(';').next().unwrap_or("").trim();
    if !["application/wasm", "application/octet-stream"]
        .iter()
        .any(|m| essence.eq_ignore_ascii_case(m))
    {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("a module is application/wasm (or application/octet-stream), not {media:?}"),
        ));
    }
    if body.len() > crate::limits::MODULE_BYTES_MAX {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TooLarge",
            format!(
                "the module is {} bytes, over MODULE_BYTES_MAX = {}",
                body.len(),
                crate::limits::MODULE_BYTES_MAX
            ),
        ));
    }
    let request = Request::Deploy {
        actor: actor.clone(),
        wasm: serde_bytes::ByteBuf::from(body.to_vec()),
    };
    write_json(&actor, write(shared, &caller, request).await?)
}

/// The exactly-once tag of an `Idempotency-Key`: the same key (of the same
/// user) is the same write, applied once and answered with its first
/// outcome, from any node.
fn tag_of(req: &HttpRequest, caller: &Caller) -> Result<Option<ClientTag>, Problem> {
    let Some(key) = req.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    let key = key
        .to_str()
        .map_err(|_| Problem::bad_request("Idempotency-Key is visible ASCII"))?;
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(Problem::bad_request(format!(
            "Idempotency-Key is 1 to IDEMPOTENCY_KEY_BYTES_MAX = {IDEMPOTENCY_KEY_BYTES_MAX} bytes"
        )));
    }
    let mut h = blake3::Hasher::new();
    h.update(b"understudy http idempotency key\0");
    h.update(
        caller
            .principal
            .as_ref()
            .map_or("", |p| p.user.as_str())
            .as_bytes(),
    );
    h.update(b"\0");
    h.update(key.as_bytes());
    let id = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    Ok(Some(ClientTag {
        client_id: id,
        seq: 1,
        acked_below: 1,
    }))
}

async fn command(
    shared: &Shared,
    req: &HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    let actor = actor_of(req)?;
    let params: CommandParams = query_params(req)?;
    let concern = match params.concern.as_deref() {
        None | Some("majority") => WriteConcern::Majority,
        Some("leader") => WriteConcern::Leader,
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "concern is `majority` or `leader`, not {other:?}"
            )));
        }
    };
    let value: serde_json::Value = json_body(req, &body, "a command")?;
    let command = crate::codec::to_cbor(&value);
    let request = Request::Command {
        actor: actor.clone(),
        command: serde_bytes::ByteBuf::from(command),
        client: tag_of(req, &caller)?,
        concern,
    };
    write_json(&actor, write(shared, &caller, request).await?)
}

async fn query(
    shared: &Shared,
    req: &HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    let actor = actor_of(req)?;
    let params: QueryParams = query_params(req)?;
    let level = match params.level.as_deref() {
        None => ReadLevel::Linearizable,
        Some(s) => crate::api::parse_read_level(s).map_err(Problem::bad_request)?,
    };
    let value: serde_json::Value = json_body(req, &body, "a query")?;
    let request = Request::Query {
        actor: actor.clone(),
        request: serde_bytes::ByteBuf::from(crate::codec::to_cbor(&value)),
        level,
    };
    match ask(shared, &caller, request).await? {
        Response::Read {
            outcome,
            applied_index,
        } => Ok(HttpResponse::Ok().json(ReadJson {
            outcome: outcome_json(&actor, &outcome)?,
            applied_index,
        })),
        other => Err(unexpected(other)),
    }
}

async fn promote(
    shared: &Shared,
    req: &HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    let p: PromoteJson = json_body(req, &body, "a promotion")?;
    let request = Request::Promote {
        node: p.node,
        force: p.force,
    };
    // A forced promotion is for the node asked; a switchover is the
    // leader's, passed on like a write.
    let answer = if p.force {
        ask(shared, &caller, request).await?
    } else {
        write(shared, &caller, request).await?
    };
    match answer {
        Response::Promoting { node, term } => {
            Ok(HttpResponse::Accepted().json(PromotingJson { node, term }))
        }
        other => Err(unexpected(other)),
    }
}

async fn members(shared: &Shared, req: &HttpRequest) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    let s = own_status(shared, &caller).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "index": s.membership_index,
        "membership": s.membership,
    })))
}

async fn change_members(
    shared: &Shared,
    req: &HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    let change: MembershipChange = json_body(req, &body, "a membership change")?;
    let request = Request::Membership {
        change,
        client: tag_of(req, &caller)?,
        joining: None,
    };
    match write(shared, &caller, request).await? {
        Response::Written { term, index, .. } => Ok(written(term, index, None)),
        other => Err(unexpected(other)),
    }
}

/// A change done (a configuration, an auth change): its entry, and a new
/// token's id and text (shown this once).
fn written(term: u64, index: u64, token: Option<(String, String)>) -> HttpResponse {
    let mut body = serde_json::json!({ "state": "written", "term": term, "index": index });
    if let Some((id, text)) = token {
        body["token_id"] = id.into();
        body["token"] = text.into();
    }
    HttpResponse::Ok().json(body)
}

async fn auth_show(shared: &Shared, req: &HttpRequest) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    match ask(
        shared,
        &caller,
        Request::Auth(crate::api::AuthRequest::Show),
    )
    .await?
    {
        Response::AuthState(s) => Ok(HttpResponse::Ok().json(s)),
        other => Err(unexpected(other)),
    }
}

async fn auth_change(
    shared: &Shared,
    req: &HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    let change: crate::api::AuthRequest = json_body(req, &body, "an auth change")?;
    if matches!(change, crate::api::AuthRequest::Show) {
        return Err(Problem::bad_request("GET /v1/auth shows the auth state"));
    }
    match write(shared, &caller, Request::Auth(change)).await? {
        Response::Written { term, index, .. } => Ok(written(term, index, None)),
        Response::TokenCreated {
            id,
            token,
            term,
            index,
        } => Ok(written(term, index, Some((id, token)))),
        other => Err(unexpected(other)),
    }
}

async fn audit(shared: &Shared, req: &HttpRequest) -> Result<HttpResponse, Problem> {
    let caller = caller(shared, req)?;
    let params: AuditParams = query_params(req)?;
    let request = Request::Audit {
        limit: params.limit.unwrap_or(100),
    };
    match ask(shared, &caller, request).await? {
        Response::Audit(records) => Ok(HttpResponse::Ok().json(records)),
        other => Err(unexpected(other)),
    }
}

/// The methods of the routes (for tests and the OpenAPI check).
pub fn route_methods() -> Vec<(Method, &'static str)> {
    ROUTES
        .iter()
        .map(|(m, p)| (Method::from_bytes(m.as_bytes()).expect("a method"), *p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_connections_are_bounded_at_and_one_past_their_limit() {
        let mut map = HashMap::new();
        for i in 0..PROXY_CONNECTIONS_MAX {
            remember(&mut map, i, (), PROXY_CONNECTIONS_MAX);
        }
        assert_eq!(map.len(), PROXY_CONNECTIONS_MAX);
        remember(&mut map, 0, (), PROXY_CONNECTIONS_MAX);
        assert_eq!(map.len(), PROXY_CONNECTIONS_MAX, "a known key replaces");
        remember(&mut map, PROXY_CONNECTIONS_MAX, (), PROXY_CONNECTIONS_MAX);
        assert_eq!(map.len(), 1, "one past: the map starts again");
    }

    #[test]
    fn paths_match_their_templates_only() {
        assert!(route_matches("/v1/actors/{actor}", "/v1/actors/kv"));
        assert!(!route_matches("/v1/actors/{actor}", "/v1/actors/"));
        assert!(!route_matches(
            "/v1/actors/{actor}",
            "/v1/actors/kv/commands"
        ));
        assert!(route_matches("/v1/status", "/v1/status"));
    }
}
