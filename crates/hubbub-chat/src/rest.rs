//! The chat's REST API under `/api` (described by `/api/openapi.json`). Calls take
//! `Authorization: Bearer <access token>`; every error is
//! `{"error":{"code","message"}}` with the matching HTTP status.

use crate::error::{ChatError, ChatResult, Kind};
use crate::rpc::page;
use crate::Chat;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use hubbub_store::{RoomId, User};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

type AppState = Arc<Chat>;

/// The user of the request's access token.
pub struct AuthUser(pub User);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ChatError;

    async fn from_request_parts(parts: &mut Parts, chat: &AppState) -> Result<Self, ChatError> {
        let header = parts.headers.get("authorization").and_then(|v| v.to_str().ok());
        let token = header
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| {
                ChatError::unauthorized("log in first: Authorization: Bearer <access token> is missing")
            })?;
        Ok(AuthUser(chat.authenticate(token).await?))
    }
}

/// The client's address, for log-in and sign-up rate limiting: an IPv4 address, or the /64
/// network of an IPv6 one (one host usually has a whole /64, so counting single IPv6
/// addresses would give it 2^64 budgets). Behind a reverse proxy, every request comes from
/// the proxy: `chat.client_address_header` names the header it sets, whose last address (the
/// one the proxy itself saw) is then used.
pub struct ClientAddr(String);

impl ClientAddr {
    fn key(ip: IpAddr) -> String {
        match ip.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", Ipv6Addr::from(net))
            }
        }
    }

    /// The last address in `header` (comma separated, as `X-Forwarded-For`).
    fn from_header(parts: &Parts, header: &str) -> Option<IpAddr> {
        let value = parts.headers.get_all(header).iter().next_back()?.to_str().ok()?;
        value.rsplit(',').next()?.trim().parse().ok()
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = ChatError;

    async fn from_request_parts(parts: &mut Parts, chat: &AppState) -> Result<Self, ChatError> {
        let header = chat.config.client_address_header.as_str();
        let proxied = (!header.is_empty()).then(|| Self::from_header(parts, header)).flatten();
        let addr = proxied.or_else(|| parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()));
        Ok(ClientAddr(addr.map_or_else(|| "unknown".into(), Self::key)))
    }
}

/// Reads a request body up to `max` bytes: a larger one is refused (413, the chat's JSON
/// error naming `key`) before more of it is buffered.
async fn read_body(body: axum::body::Body, max: usize, key: &str) -> ChatResult<Bytes> {
    axum::body::to_bytes(body, max).await.map_err(|_| {
        ChatError::new(Kind::TooLarge, format!("the request body is larger than {max} bytes ({key})"))
    })
}

/// The body of an `/api/auth/*` request, read only up to `chat.auth_max_body` bytes: a
/// larger one is refused (413) before it is buffered, parsed or counted anywhere.
struct AuthBody(Bytes);

impl FromRequest<AppState> for AuthBody {
    type Rejection = ChatError;

    async fn from_request(req: Request, chat: &AppState) -> Result<Self, ChatError> {
        read_body(req.into_body(), chat.config.auth_max_body, "chat.auth_max_body").await.map(AuthBody)
    }
}

/// The body of every other chat request, read only up to `chat.max_body` bytes (413 JSON
/// over it, rather than axum's plain-text answer at its own 2 MB default).
struct ChatBody(Bytes);

impl FromRequest<AppState> for ChatBody {
    type Rejection = ChatError;

    async fn from_request(req: Request, chat: &AppState) -> Result<Self, ChatError> {
        read_body(req.into_body(), chat.config.max_body, "chat.max_body").await.map(ChatBody)
    }
}

/// Decodes a JSON body with an error a person can read.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> ChatResult<T> {
    let text = if bytes.iter().all(u8::is_ascii_whitespace) { &b"{}"[..] } else { &bytes[..] };
    serde_json::from_slice(text)
        .map_err(|e| ChatError::bad_request(format!("the request body is not valid: {e}")))
}

fn param<T: std::str::FromStr>(params: &HashMap<String, String>, key: &str) -> ChatResult<T> {
    params
        .get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ChatError::bad_request(format!("`{key}` in the path must be a number")))
}

/// `{id}` of the path and the JSON body, for the routes of one room that take a body.
struct RoomJson<T>(RoomId, T);

/// `{id}` and `{seq}` of the path and the JSON body, for the routes of one message that take
/// a body.
struct MessageJson<T>(RoomId, u64, T);

/// The path parameters and the raw body, with axum's own answers when either cannot be read.
/// With [`RoomJson`] and [`MessageJson`] the checks keep this order: the path, the body's
/// bytes, then the numbers of the path, then the JSON.
async fn path_and_body(req: Request, state: &AppState) -> Result<(HashMap<String, String>, Bytes), Response> {
    let (mut parts, raw) = req.into_parts();
    let Path(p) = Path::<HashMap<String, String>>::from_request_parts(&mut parts, state)
        .await
        .map_err(IntoResponse::into_response)?;
    let ChatBody(raw) = ChatBody::from_request(Request::from_parts(parts, raw), state)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok((p, raw))
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for RoomJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (p, raw) = path_and_body(req, state).await?;
        let room = param(&p, "id").map_err(IntoResponse::into_response)?;
        Ok(RoomJson(room, body(&raw).map_err(IntoResponse::into_response)?))
    }
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for MessageJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (p, raw) = path_and_body(req, state).await?;
        let room = param(&p, "id").map_err(IntoResponse::into_response)?;
        let seq = param(&p, "seq").map_err(IntoResponse::into_response)?;
        Ok(MessageJson(room, seq, body(&raw).map_err(IntoResponse::into_response)?))
    }
}

fn query_number<T: std::str::FromStr>(query: &HashMap<String, String>, key: &str) -> ChatResult<Option<T>> {
    match query.get(key).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => {
            v.parse().map(Some).map_err(|_| ChatError::bad_request(format!("`{key}` must be a number")))
        }
    }
}

fn ok<T: serde::Serialize>(value: T) -> Response {
    Json(value).into_response()
}

fn created<T: serde::Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Deserialize)]
struct NameBody {
    name: String,
}

#[derive(Deserialize)]
struct UsernameBody {
    username: String,
}

#[derive(Deserialize)]
struct SendBody {
    text: String,
    #[serde(default)]
    client_msg_id: String,
    #[serde(default)]
    reply_to: Option<u64>,
}

#[derive(Deserialize)]
struct TextBody {
    text: String,
}

#[derive(Deserialize)]
struct EmojiBody {
    emoji: String,
}

#[derive(Deserialize)]
struct ReceiptBody {
    #[serde(default)]
    delivered_seq: Option<u64>,
    #[serde(default)]
    read_seq: Option<u64>,
}

#[derive(Deserialize, Default)]
struct IdsBody {
    #[serde(default)]
    ids: Vec<i64>,
}

async fn signup(
    State(chat): State<AppState>,
    ClientAddr(addr): ClientAddr,
    AuthBody(raw): AuthBody,
) -> ChatResult<Response> {
    let c: Credentials = body(&raw)?;
    Ok(created(chat.signup(c.username.trim(), &c.password, &addr).await?))
}

async fn login(
    State(chat): State<AppState>,
    ClientAddr(addr): ClientAddr,
    AuthBody(raw): AuthBody,
) -> ChatResult<Response> {
    let c: Credentials = body(&raw)?;
    Ok(ok(chat.login(c.username.trim(), &c.password, &addr).await?))
}

async fn refresh(State(chat): State<AppState>, AuthBody(raw): AuthBody) -> ChatResult<Response> {
    let r: RefreshBody = body(&raw)?;
    Ok(ok(chat.refresh(&r.refresh_token).await?))
}

async fn logout(State(chat): State<AppState>, AuthBody(raw): AuthBody) -> ChatResult<Response> {
    let r: RefreshBody = body(&raw)?;
    chat.logout(&r.refresh_token).await?;
    Ok(no_content())
}

async fn me(AuthUser(user): AuthUser) -> Response {
    ok(user)
}

async fn list_rooms(State(chat): State<AppState>, AuthUser(user): AuthUser) -> ChatResult<Response> {
    Ok(ok(chat.rooms(user.id).await?))
}

async fn create_room(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    ChatBody(raw): ChatBody,
) -> ChatResult<Response> {
    let b: NameBody = body(&raw)?;
    Ok(created(chat.create_room(&user, &b.name).await?))
}

async fn get_room(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    Path(p): Path<HashMap<String, String>>,
) -> ChatResult<Response> {
    Ok(ok(chat.room_view(param(&p, "id")?, user.id).await?))
}

async fn rename_room(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    RoomJson(room, b): RoomJson<NameBody>,
) -> ChatResult<Response> {
    Ok(ok(chat.rename(&user, room, &b.name).await?))
}

async fn invite(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    RoomJson(room, b): RoomJson<UsernameBody>,
) -> ChatResult<Response> {
    Ok(ok(chat.invite(&user, room, &b.username).await?))
}

async fn leave(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    Path(p): Path<HashMap<String, String>>,
) -> ChatResult<Response> {
    chat.leave(&user, param(&p, "id")?).await?;
    Ok(no_content())
}

async fn open_dm(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    ChatBody(raw): ChatBody,
) -> ChatResult<Response> {
    let b: UsernameBody = body(&raw)?;
    Ok(ok(chat.open_dm(&user, &b.username).await?))
}

async fn list_messages(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    Path(p): Path<HashMap<String, String>>,
    Query(q): Query<HashMap<String, String>>,
) -> ChatResult<Response> {
    let page = page(query_number(&q, "before")?, query_number(&q, "after")?)?;
    let limit = query_number(&q, "limit")?.unwrap_or(50);
    Ok(ok(chat.messages(&user, param(&p, "id")?, page, limit).await?))
}

async fn send_message(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    RoomJson(room, b): RoomJson<SendBody>,
) -> ChatResult<Response> {
    Ok(created(chat.send(&user, room, &b.text, &b.client_msg_id, b.reply_to).await?))
}

async fn edit_message(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    MessageJson(room, seq, b): MessageJson<TextBody>,
) -> ChatResult<Response> {
    Ok(ok(chat.edit(&user, room, seq, &b.text).await?))
}

async fn delete_message(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    Path(p): Path<HashMap<String, String>>,
) -> ChatResult<Response> {
    Ok(ok(chat.delete(&user, param(&p, "id")?, param(&p, "seq")?).await?))
}

async fn add_reaction(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    MessageJson(room, seq, b): MessageJson<EmojiBody>,
) -> ChatResult<Response> {
    Ok(ok(chat.react(&user, room, seq, &b.emoji, true).await?))
}

async fn remove_reaction(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    Path(p): Path<HashMap<String, String>>,
) -> ChatResult<Response> {
    let emoji = p.get("emoji").cloned().unwrap_or_default();
    Ok(ok(chat.react(&user, param(&p, "id")?, param(&p, "seq")?, &emoji, false).await?))
}

async fn receipts(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    RoomJson(room, b): RoomJson<ReceiptBody>,
) -> ChatResult<Response> {
    Ok(ok(chat.mark(&user, room, b.delivered_seq, b.read_seq).await?))
}

async fn typing(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    Path(p): Path<HashMap<String, String>>,
) -> ChatResult<Response> {
    chat.typing(&user, param(&p, "id")?).await?;
    Ok(no_content())
}

async fn notifications(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ChatResult<Response> {
    Ok(ok(chat.notifications(&user, query_number(&q, "limit")?.unwrap_or(50)).await?))
}

async fn read_notifications(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    ChatBody(raw): ChatBody,
) -> ChatResult<Response> {
    let b: IdsBody = body(&raw)?;
    chat.read_notifications(&user, &b.ids).await?;
    Ok(no_content())
}

async fn search(
    State(chat): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<HashMap<String, String>>,
) -> ChatResult<Response> {
    let text = q.get("q").cloned().unwrap_or_default();
    Ok(ok(chat.search(&user, &text, query_number(&q, "limit")?.unwrap_or(20)).await?))
}

async fn openapi() -> Response {
    ok(crate::openapi::document())
}

/// Every route of the chat's REST API, as (method, path): the OpenAPI test checks the
/// document against this list.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/auth/signup"),
    ("post", "/api/auth/login"),
    ("post", "/api/auth/refresh"),
    ("post", "/api/auth/logout"),
    ("get", "/api/me"),
    ("get", "/api/rooms"),
    ("post", "/api/rooms"),
    ("get", "/api/rooms/{id}"),
    ("patch", "/api/rooms/{id}"),
    ("post", "/api/rooms/{id}/members"),
    ("delete", "/api/rooms/{id}/members/me"),
    ("post", "/api/dms"),
    ("get", "/api/rooms/{id}/messages"),
    ("post", "/api/rooms/{id}/messages"),
    ("patch", "/api/rooms/{id}/messages/{seq}"),
    ("delete", "/api/rooms/{id}/messages/{seq}"),
    ("post", "/api/rooms/{id}/messages/{seq}/reactions"),
    ("delete", "/api/rooms/{id}/messages/{seq}/reactions/{emoji}"),
    ("post", "/api/rooms/{id}/receipts"),
    ("post", "/api/rooms/{id}/typing"),
    ("get", "/api/notifications"),
    ("post", "/api/notifications/read"),
    ("get", "/api/search"),
    ("get", "/api/openapi.json"),
];

pub fn router(chat: Arc<Chat>) -> Router {
    Router::new()
        .route("/api/auth/signup", post(signup))
        .route("/api/auth/login", post(login))
        .route("/api/auth/refresh", post(refresh))
        .route("/api/auth/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/rooms", get(list_rooms).post(create_room))
        .route("/api/rooms/{id}", get(get_room).patch(rename_room))
        .route("/api/rooms/{id}/members", post(invite))
        .route("/api/rooms/{id}/members/me", delete(leave))
        .route("/api/dms", post(open_dm))
        .route("/api/rooms/{id}/messages", get(list_messages).post(send_message))
        .route("/api/rooms/{id}/messages/{seq}", axum::routing::patch(edit_message).delete(delete_message))
        .route("/api/rooms/{id}/messages/{seq}/reactions", post(add_reaction))
        .route("/api/rooms/{id}/messages/{seq}/reactions/{emoji}", delete(remove_reaction))
        .route("/api/rooms/{id}/receipts", post(receipts))
        .route("/api/rooms/{id}/typing", post(typing))
        .route("/api/notifications", get(notifications))
        .route("/api/notifications/read", post(read_notifications))
        .route("/api/search", get(search))
        .route("/api/openapi.json", get(openapi))
        .with_state(chat)
}
