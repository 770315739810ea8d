//! The OpenAPI 3.1 document of the chat's REST API, served at `/api/openapi.json`. Built
//! from one table of operations; a test keeps it equal to the router's routes.

use serde_json::{json, Map, Value};

struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    auth: bool,
    /// Schema name of the JSON body.
    body: Option<&'static str>,
    /// Query parameters: (name, description).
    query: &'static [(&'static str, &'static str)],
    status: u16,
    /// Schema of the answer; `[Name]` for a list.
    answer: Option<&'static str>,
}

const OPS: &[Op] = &[
    Op {
        method: "post",
        path: "/api/auth/signup",
        summary: "Create an account and log in",
        auth: false,
        body: Some("Credentials"),
        query: &[],
        status: 201,
        answer: Some("Session"),
    },
    Op {
        method: "post",
        path: "/api/auth/login",
        summary: "Log in (rate-limited per account and address)",
        auth: false,
        body: Some("Credentials"),
        query: &[],
        status: 200,
        answer: Some("Session"),
    },
    Op {
        method: "post",
        path: "/api/auth/refresh",
        summary: "Rotate a refresh token; reusing an old one revokes its family",
        auth: false,
        body: Some("RefreshToken"),
        query: &[],
        status: 200,
        answer: Some("Session"),
    },
    Op {
        method: "post",
        path: "/api/auth/logout",
        summary: "Revoke a refresh token's family",
        auth: false,
        body: Some("RefreshToken"),
        query: &[],
        status: 204,
        answer: None,
    },
    Op {
        method: "get",
        path: "/api/me",
        summary: "The logged-in user",
        auth: true,
        body: None,
        query: &[],
        status: 200,
        answer: Some("User"),
    },
    Op {
        method: "get",
        path: "/api/rooms",
        summary: "The user's rooms with last message, unread count and members",
        auth: true,
        body: None,
        query: &[],
        status: 200,
        answer: Some("[Room]"),
    },
    Op {
        method: "post",
        path: "/api/rooms",
        summary: "Create a group room (the caller is its owner)",
        auth: true,
        body: Some("RoomName"),
        query: &[],
        status: 201,
        answer: Some("Room"),
    },
    Op {
        method: "get",
        path: "/api/rooms/{id}",
        summary: "One room",
        auth: true,
        body: None,
        query: &[],
        status: 200,
        answer: Some("Room"),
    },
    Op {
        method: "patch",
        path: "/api/rooms/{id}",
        summary: "Rename a room (owner or admin)",
        auth: true,
        body: Some("RoomName"),
        query: &[],
        status: 200,
        answer: Some("Room"),
    },
    Op {
        method: "post",
        path: "/api/rooms/{id}/members",
        summary: "Invite a user by username (owner or admin)",
        auth: true,
        body: Some("Username"),
        query: &[],
        status: 200,
        answer: Some("Room"),
    },
    Op {
        method: "delete",
        path: "/api/rooms/{id}/members/me",
        summary: "Leave a group room",
        auth: true,
        body: None,
        query: &[],
        status: 204,
        answer: None,
    },
    Op {
        method: "post",
        path: "/api/dms",
        summary: "The direct conversation with a user (the same pair always gets the same room)",
        auth: true,
        body: Some("Username"),
        query: &[],
        status: 200,
        answer: Some("Room"),
    },
    Op {
        method: "get",
        path: "/api/rooms/{id}/messages",
        summary: "Page through messages, oldest first",
        auth: true,
        body: None,
        query: &[
            ("before", "messages before this seq"),
            ("after", "messages after this seq"),
            ("limit", "1 to 200, default 50; a page is also cut at client.max_answer_bytes (the messages nearest the cursor are kept: ask again before the first or after the last)"),
        ],
        status: 200,
        answer: Some("[Message]"),
    },
    Op {
        method: "post",
        path: "/api/rooms/{id}/messages",
        summary: "Send a message; the same client_msg_id returns the original",
        auth: true,
        body: Some("NewMessage"),
        query: &[],
        status: 201,
        answer: Some("Message"),
    },
    Op {
        method: "patch",
        path: "/api/rooms/{id}/messages/{seq}",
        summary: "Edit one's own message",
        auth: true,
        body: Some("Text"),
        query: &[],
        status: 200,
        answer: Some("Message"),
    },
    Op {
        method: "delete",
        path: "/api/rooms/{id}/messages/{seq}",
        summary: "Delete one's own message, or any as the room's owner/admin (leaves a tombstone)",
        auth: true,
        body: None,
        query: &[],
        status: 200,
        answer: Some("Message"),
    },
    Op {
        method: "post",
        path: "/api/rooms/{id}/messages/{seq}/reactions",
        summary: "React to a message",
        auth: true,
        body: Some("Emoji"),
        query: &[],
        status: 200,
        answer: Some("Message"),
    },
    Op {
        method: "delete",
        path: "/api/rooms/{id}/messages/{seq}/reactions/{emoji}",
        summary: "Take a reaction back",
        auth: true,
        body: None,
        query: &[],
        status: 200,
        answer: Some("Message"),
    },
    Op {
        method: "post",
        path: "/api/rooms/{id}/receipts",
        summary: "Move the delivered / read markers forward (never back)",
        auth: true,
        body: Some("Receipt"),
        query: &[],
        status: 200,
        answer: Some("Markers"),
    },
    Op {
        method: "post",
        path: "/api/rooms/{id}/typing",
        summary: "Say the user is typing (ephemeral, throttled)",
        auth: true,
        body: None,
        query: &[],
        status: 204,
        answer: None,
    },
    Op {
        method: "get",
        path: "/api/notifications",
        summary: "Mentions and invitations, newest first, with read state",
        auth: true,
        body: None,
        query: &[("limit", "1 to 200, default 50")],
        status: 200,
        answer: Some("[Notification]"),
    },
    Op {
        method: "post",
        path: "/api/notifications/read",
        summary: "Mark notifications read (all when ids is empty)",
        auth: true,
        body: Some("Ids"),
        query: &[],
        status: 204,
        answer: None,
    },
    Op {
        method: "get",
        path: "/api/search",
        summary: "Full-text search in the caller's rooms",
        auth: true,
        body: None,
        query: &[("q", "what to search for"), ("limit", "1 to 100, default 20")],
        status: 200,
        answer: Some("[SearchHit]"),
    },
    Op {
        method: "get",
        path: "/api/openapi.json",
        summary: "This document",
        auth: false,
        body: None,
        query: &[],
        status: 200,
        answer: None,
    },
];

fn schema_ref(name: &str) -> Value {
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(item) => json!({ "type": "array", "items": { "$ref": format!("#/components/schemas/{item}") } }),
        None => json!({ "$ref": format!("#/components/schemas/{name}") }),
    }
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}

fn schemas() -> Value {
    let int = json!({ "type": "integer" });
    let string = json!({ "type": "string" });
    let opt_int = json!({ "type": ["integer", "null"] });
    json!({
        "Error": object(&["error"], json!({ "error": object(&["code", "message"], json!({ "code": string, "message": string })) })),
        "Credentials": object(&["username", "password"], json!({ "username": string, "password": string })),
        "RefreshToken": object(&["refresh_token"], json!({ "refresh_token": string })),
        "User": object(&["id", "username", "created_at"], json!({ "id": int, "username": string, "created_at": int, "last_seen": opt_int })),
        "Session": object(&["user", "access_token", "refresh_token", "expires_in"], json!({
            "user": schema_ref("User"), "access_token": string, "refresh_token": string, "expires_in": int })),
        "RoomName": object(&["name"], json!({ "name": string })),
        "Username": object(&["username"], json!({ "username": string })),
        "Member": object(&["id", "username", "role", "online"], json!({
            "id": int, "username": string, "role": { "enum": ["owner", "admin", "member"] }, "online": { "type": "boolean" },
            "last_seen": opt_int, "delivered_seq": int, "read_seq": int })),
        "Room": object(&["id", "kind", "name", "channel", "last_seq", "role", "unread", "members"], json!({
            "id": int, "kind": { "enum": ["group", "dm"] }, "name": string, "channel": string, "last_seq": int,
            "role": { "enum": ["owner", "admin", "member"] }, "last_message": { "oneOf": [schema_ref("Message"), { "type": "null" }] },
            "unread": int, "members": schema_ref("[Member]") })),
        "Reaction": object(&["emoji", "user_ids"], json!({ "emoji": string, "user_ids": { "type": "array", "items": int } })),
        "Message": object(&["room_id", "seq", "sender_id", "sender", "text", "client_msg_id", "created_at", "deleted", "reactions"], json!({
            "room_id": int, "seq": int, "sender_id": int, "sender": string, "text": string, "client_msg_id": string,
            "reply_to": opt_int, "created_at": int, "edited_at": opt_int, "deleted": { "type": "boolean" },
            "reactions": schema_ref("[Reaction]") })),
        "NewMessage": object(&["text", "client_msg_id"], json!({ "text": string, "client_msg_id": string, "reply_to": opt_int })),
        "Text": object(&["text"], json!({ "text": string })),
        "Emoji": object(&["emoji"], json!({ "emoji": string })),
        "Receipt": object(&[], json!({ "delivered_seq": int, "read_seq": int })),
        "Markers": object(&["room_id", "user_id", "delivered_seq", "read_seq"], json!({
            "room_id": int, "user_id": int, "delivered_seq": int, "read_seq": int })),
        "Notification": object(&["id", "kind", "payload", "read", "created_at"], json!({
            "id": int, "user_id": int, "kind": string, "room_id": opt_int, "seq": opt_int, "payload": { "type": "object" },
            "read": { "type": "boolean" }, "created_at": int })),
        "Ids": object(&[], json!({ "ids": { "type": "array", "items": int } })),
        "SearchHit": object(&["room_id", "room_name", "seq", "sender", "snippet", "created_at"], json!({
            "room_id": int, "room_name": string, "seq": int, "sender": string, "snippet": string, "created_at": int })),
    })
}

fn operation(op: &Op) -> Value {
    let mut parameters: Vec<Value> = op
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            let schema =
                if name == "emoji" { json!({ "type": "string" }) } else { json!({ "type": "integer" }) };
            json!({ "name": name, "in": "path", "required": true, "schema": schema })
        })
        .collect();
    parameters.extend(op.query.iter().map(|(name, description)| {
        let schema = if *name == "q" { json!({ "type": "string" }) } else { json!({ "type": "integer" }) };
        json!({ "name": name, "in": "query", "required": *name == "q", "description": description, "schema": schema })
    }));
    let mut responses = Map::new();
    let answer = match op.answer {
        Some(schema) => {
            json!({ "description": "success", "content": { "application/json": { "schema": schema_ref(schema) } } })
        }
        None => json!({ "description": "success" }),
    };
    responses.insert(op.status.to_string(), answer);
    let error = json!({ "description": "error", "content": { "application/json": { "schema": schema_ref("Error") } } });
    let mut codes = vec!["400", "429", "500"];
    if op.auth {
        codes.extend(["401", "403", "404"]);
    }
    if op.body.is_some() {
        codes.push("413");
    }
    for code in codes {
        responses.insert(code.into(), error.clone());
    }
    let mut o = json!({ "summary": op.summary, "parameters": parameters, "responses": responses });
    if let Some(body) = op.body {
        o["requestBody"] =
            json!({ "required": true, "content": { "application/json": { "schema": schema_ref(body) } } });
    }
    if op.auth {
        o["security"] = json!([{ "bearer": [] }]);
    }
    o
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPS {
        let entry = paths.entry(op.path).or_insert_with(|| json!({}));
        entry[op.method] = operation(op);
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Hubbub chat API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn document_lists_exactly_the_routes() {
        let doc = document();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let routed: BTreeSet<_> =
            crate::rest::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        assert_eq!(documented, routed);
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(schemas.contains_key(&name), "missing schema {name}");
        }
    }
}
