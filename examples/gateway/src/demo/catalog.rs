//! The demo server's tools, resources and prompts.
//!
//! Tool names prefixed `test_` (and `json_schema_2020_12_tool`) are the ones the official
//! MCP conformance suite calls; the others (`echo`, `add`, `slow_count`,
//! `get_demo_credentials`) are there for people trying the gateway by hand.

use std::time::Duration;

use serde_json::{Value, json};

use super::Ctx;

/// A 1x1 red PNG.
pub const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
/// A tiny silent WAV file (8 samples, 8 kHz, 16-bit mono).
pub const WAV_SILENCE: &str =
    "UklGRjQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YRAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn no_args() -> Value {
    json!({"type": "object", "properties": {}})
}

fn tool(name: &str, description: &str, input_schema: Value) -> Value {
    json!({"name": name, "description": description, "inputSchema": input_schema})
}

/// The `tools/list` result's `tools`.
pub fn tools() -> Vec<Value> {
    vec![
        tool(
            "echo",
            "Echoes the message back",
            json!({"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}),
        ),
        tool(
            "add",
            "Adds two numbers",
            json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}),
        ),
        tool(
            "slow_count",
            "Counts to `count`, streaming a progress notification and a log message per step (SSE)",
            json!({"type": "object", "properties": {
                "count": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
                "delay_ms": {"type": "integer", "minimum": 0, "maximum": 2000, "default": 100}
            }}),
        ),
        tool(
            "get_demo_credentials",
            "Returns text that looks like credentials (for masking and redaction demos)",
            no_args(),
        ),
        tool(
            "fetch_url",
            "Pretends to fetch a URL (for URL/SSRF rule demos); returns the URL it was given",
            json!({"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}),
        ),
        tool("test_simple_text", "Returns simple text content", no_args()),
        tool("test_image_content", "Returns image content", no_args()),
        tool("test_audio_content", "Returns audio content", no_args()),
        tool(
            "test_embedded_resource",
            "Returns an embedded resource",
            no_args(),
        ),
        tool(
            "test_multiple_content_types",
            "Returns text, image and resource content",
            no_args(),
        ),
        tool(
            "test_tool_with_logging",
            "Sends log notifications while running",
            no_args(),
        ),
        tool(
            "test_error_handling",
            "Always returns an error result",
            no_args(),
        ),
        tool(
            "test_tool_with_progress",
            "Sends progress notifications while running",
            no_args(),
        ),
        tool(
            "test_sampling",
            "Asks the client for an LLM completion",
            json!({"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]}),
        ),
        tool(
            "test_elicitation",
            "Asks the user for input",
            json!({"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}),
        ),
        tool(
            "test_elicitation_sep1034_defaults",
            "Elicitation with default values",
            no_args(),
        ),
        tool(
            "test_elicitation_sep1330_enums",
            "Elicitation with enum schemas",
            no_args(),
        ),
        tool(
            "test_reconnection",
            "Closes its SSE stream mid-call; the result is delivered on reconnection",
            no_args(),
        ),
        tool(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features",
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {"address": {"type": "object", "properties": {
                    "street": {"type": "string"}, "city": {"type": "string"}}}},
                "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                "additionalProperties": false
            }),
        ),
    ]
}

fn text(t: impl Into<String>) -> Value {
    json!({"type": "text", "text": t.into()})
}

fn ok(content: Vec<Value>) -> Value {
    json!({"content": content})
}

fn tool_error(message: &str) -> Value {
    json!({"content": [text(message)], "isError": true})
}

/// Why a tool call failed at the protocol level (JSON-RPC error rather than an
/// `isError` result).
pub struct CallError {
    pub code: i64,
    pub message: String,
}

/// Runs a tool.
pub async fn call_tool(name: &str, args: &Value, ctx: &Ctx) -> Result<Value, CallError> {
    let str_arg = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(match name {
        "echo" => match str_arg("message") {
            Some(m) => ok(vec![text(m)]),
            None => tool_error("missing string argument `message`"),
        },
        "add" => {
            let a = args.get("a").and_then(Value::as_f64);
            let b = args.get("b").and_then(Value::as_f64);
            match (a, b) {
                (Some(a), Some(b)) => {
                    let sum = a + b;
                    let shown = if sum.fract() == 0.0 && sum.abs() < 1e15 {
                        format!("{}", sum as i64)
                    } else {
                        format!("{sum}")
                    };
                    json!({"content": [text(shown)], "structuredContent": {"sum": sum}})
                }
                _ => tool_error("`a` and `b` must be numbers"),
            }
        }
        "slow_count" => {
            let count = args
                .get("count")
                .and_then(Value::as_u64)
                .unwrap_or(5)
                .clamp(1, 100);
            let delay = args
                .get("delay_ms")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .min(2000);
            for i in 1..=count {
                ctx.progress(i as f64, Some(count as f64), Some(format!("counted {i}")))
                    .await;
                ctx.log("info", json!(format!("slow_count at {i}/{count}")))
                    .await;
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            ok(vec![text(format!("counted to {count}"))])
        }
        "get_demo_credentials" => ok(vec![text(
            "username: demo-admin\npassword: hunter2-demo\napi_key: sk-demo-4f9a2b7c1d8e6f30\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZW1vIn0.c2lnbmF0dXJl",
        )]),
        "fetch_url" => match str_arg("url") {
            Some(u) => ok(vec![text(format!("would fetch {u}"))]),
            None => tool_error("missing string argument `url`"),
        },
        "test_simple_text" => ok(vec![text("This is a simple text response for testing.")]),
        "test_image_content" => ok(vec![
            json!({"type": "image", "data": PNG_1X1, "mimeType": "image/png"}),
        ]),
        "test_audio_content" => ok(vec![
            json!({"type": "audio", "data": WAV_SILENCE, "mimeType": "audio/wav"}),
        ]),
        "test_embedded_resource" => ok(vec![json!({"type": "resource", "resource": {
            "uri": "test://embedded-resource", "mimeType": "text/plain",
            "text": "This is an embedded resource content."}})]),
        "test_multiple_content_types" => ok(vec![
            text("Multiple content types test:"),
            json!({"type": "image", "data": PNG_1X1, "mimeType": "image/png"}),
            json!({"type": "resource", "resource": {"uri": "test://mixed-content-resource",
                "mimeType": "application/json", "text": "{\"test\":\"data\",\"value\":123}"}}),
        ]),
        "test_tool_with_logging" => {
            ctx.log("info", json!("Tool execution started")).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            ctx.log("info", json!("Tool processing data")).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            ctx.log("info", json!("Tool execution completed")).await;
            ok(vec![text("Tool with logging executed successfully")])
        }
        "test_error_handling" => tool_error("This tool intentionally returns an error for testing"),
        "test_tool_with_progress" => {
            for (i, p) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                ctx.progress(p, Some(100.0), None).await;
            }
            ok(vec![text("Tool with progress executed successfully")])
        }
        "test_sampling" => {
            let prompt = str_arg("prompt").unwrap_or_default();
            let params = json!({"messages": [{"role": "user",
                "content": {"type": "text", "text": prompt}}], "maxTokens": 100});
            match ctx.request("sampling/createMessage", params).await {
                Ok(result) => {
                    let reply = result
                        .pointer("/content/text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    ok(vec![text(format!("LLM response: {reply}"))])
                }
                Err(e) => tool_error(&format!("sampling failed: {e}")),
            }
        }
        "test_elicitation" => {
            let message = str_arg("message").unwrap_or_default();
            let params = json!({"message": message, "requestedSchema": {"type": "object",
                "properties": {
                    "username": {"type": "string", "description": "User's response"},
                    "email": {"type": "string", "description": "User's email address"}},
                "required": ["username", "email"]}});
            elicit(ctx, params, "User response").await
        }
        "test_elicitation_sep1034_defaults" => {
            let params = json!({"message": "Please review and update the form fields with defaults",
                "requestedSchema": {"type": "object", "properties": {
                    "name": {"type": "string", "description": "User name", "default": "John Doe"},
                    "age": {"type": "integer", "description": "User age", "default": 30},
                    "score": {"type": "number", "description": "User score", "default": 95.5},
                    "status": {"type": "string", "description": "User status",
                        "enum": ["active", "inactive", "pending"], "default": "active"},
                    "verified": {"type": "boolean", "description": "Verified", "default": true}}}});
            elicit(ctx, params, "Elicitation completed").await
        }
        "test_elicitation_sep1330_enums" => {
            let params = json!({"message": "Please select options from the enum fields",
                "requestedSchema": {"type": "object", "properties": {
                    "untitledSingle": {"type": "string", "description": "Select one option",
                        "enum": ["option1", "option2", "option3"]},
                    "titledSingle": {"type": "string", "description": "Select one option with titles",
                        "oneOf": [{"const": "value1", "title": "First Option"},
                                  {"const": "value2", "title": "Second Option"},
                                  {"const": "value3", "title": "Third Option"}]},
                    "legacyEnum": {"type": "string", "description": "Select one option (legacy)",
                        "enum": ["opt1", "opt2", "opt3"],
                        "enumNames": ["Option One", "Option Two", "Option Three"]},
                    "untitledMulti": {"type": "array", "description": "Select multiple options",
                        "minItems": 1, "maxItems": 3,
                        "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
                    "titledMulti": {"type": "array", "description": "Select multiple options with titles",
                        "minItems": 1, "maxItems": 3,
                        "items": {"anyOf": [{"const": "value1", "title": "First Choice"},
                                            {"const": "value2", "title": "Second Choice"},
                                            {"const": "value3", "title": "Third Choice"}]}}}}});
            elicit(ctx, params, "Elicitation completed").await
        }
        "test_reconnection" => {
            ctx.close_stream().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            ok(vec![text("Reconnection test completed")])
        }
        "json_schema_2020_12_tool" => ok(vec![text(format!(
            "JSON Schema 2020-12 tool called with {}",
            args
        ))]),
        _ => {
            return Err(CallError {
                code: -32602,
                message: format!("Unknown tool: {}", truncate(name, 64)),
            });
        }
    })
}

async fn elicit(ctx: &Ctx, params: Value, label: &str) -> Value {
    match ctx.request("elicitation/create", params).await {
        Ok(result) => {
            let action = result
                .get("action")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            let content = result.get("content").cloned().unwrap_or(Value::Null);
            ok(vec![text(format!(
                "{label}: action={action}, content={content}"
            ))])
        }
        Err(e) => tool_error(&format!("elicitation failed: {e}")),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The `resources/list` result's `resources`.
pub fn resources() -> Vec<Value> {
    vec![
        json!({"uri": "test://static-text", "name": "Static text", "description": "A static text resource",
            "mimeType": "text/plain"}),
        json!({"uri": "test://static-binary", "name": "Static binary", "description": "A static PNG image",
            "mimeType": "image/png"}),
        json!({"uri": "test://watched-resource", "name": "Watched resource",
            "description": "A resource that can be subscribed to", "mimeType": "text/plain"}),
        json!({"uri": "demo://readme", "name": "README", "description": "What this demo server is",
            "mimeType": "text/markdown"}),
    ]
}

/// The `resources/templates/list` result's `resourceTemplates`.
pub fn resource_templates() -> Vec<Value> {
    vec![
        json!({"uriTemplate": "test://template/{id}/data", "name": "Template data",
            "description": "Data for an id", "mimeType": "application/json"}),
        json!({"uriTemplate": "demo://greeting/{name}", "name": "Greeting",
            "description": "A greeting for a name", "mimeType": "text/plain"}),
    ]
}

/// Reads a resource; `None` when there is no such resource.
pub fn read_resource(uri: &str) -> Option<Value> {
    let content = match uri {
        "test://static-text" => json!({"uri": uri, "mimeType": "text/plain",
            "text": "This is the content of the static text resource."}),
        "test://static-binary" => json!({"uri": uri, "mimeType": "image/png", "blob": PNG_1X1}),
        "test://watched-resource" => json!({"uri": uri, "mimeType": "text/plain",
            "text": "Watched resource content"}),
        "demo://readme" => json!({"uri": uri, "mimeType": "text/markdown",
            "text": "# Demo MCP server\n\nBuilt into mcp-gateway: tools, resources and prompts to try the gateway with."}),
        _ => {
            if let Some(id) = uri
                .strip_prefix("test://template/")
                .and_then(|r| r.strip_suffix("/data"))
                .filter(|id| !id.is_empty() && !id.contains('/'))
            {
                let body =
                    json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")});
                json!({"uri": uri, "mimeType": "application/json", "text": body.to_string()})
            } else if let Some(name) = uri
                .strip_prefix("demo://greeting/")
                .filter(|n| !n.is_empty() && !n.contains('/'))
            {
                json!({"uri": uri, "mimeType": "text/plain", "text": format!("Hello, {name}!")})
            } else {
                return None;
            }
        }
    };
    Some(json!({"contents": [content]}))
}

/// The `prompts/list` result's `prompts`.
pub fn prompts() -> Vec<Value> {
    vec![
        json!({"name": "test_simple_prompt", "description": "A simple prompt without arguments"}),
        json!({"name": "test_prompt_with_arguments", "description": "A prompt with arguments",
            "arguments": [
                {"name": "arg1", "description": "First test argument", "required": true},
                {"name": "arg2", "description": "Second test argument", "required": true}]}),
        json!({"name": "test_prompt_with_embedded_resource", "description": "A prompt with an embedded resource",
            "arguments": [{"name": "resourceUri", "description": "URI of the resource to embed", "required": true}]}),
        json!({"name": "test_prompt_with_image", "description": "A prompt with an image"}),
        json!({"name": "code_review", "description": "Asks for a review of a piece of code",
            "arguments": [
                {"name": "code", "description": "The code to review", "required": true},
                {"name": "language", "description": "The language of the code", "required": false}]}),
    ]
}

/// Gets a prompt; `Err` with a message when the prompt or an argument is missing.
pub fn get_prompt(name: &str, args: &Value) -> Result<Value, String> {
    let arg = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
    let user = |content: Value| json!({"role": "user", "content": content});
    Ok(match name {
        "test_simple_prompt" => {
            json!({"messages": [user(text("This is a simple prompt for testing."))]})
        }
        "test_prompt_with_arguments" => {
            let a1 = arg("arg1").ok_or("missing argument arg1")?;
            let a2 = arg("arg2").ok_or("missing argument arg2")?;
            json!({"messages": [user(text(format!("Prompt with arguments: arg1='{a1}', arg2='{a2}'")))]})
        }
        "test_prompt_with_embedded_resource" => {
            let uri = arg("resourceUri").ok_or("missing argument resourceUri")?;
            json!({"messages": [
                user(json!({"type": "resource", "resource": {"uri": uri, "mimeType": "text/plain",
                    "text": "Embedded resource content for testing."}})),
                user(text("Please process the embedded resource above."))]})
        }
        "test_prompt_with_image" => json!({"messages": [
            user(json!({"type": "image", "data": PNG_1X1, "mimeType": "image/png"})),
            user(text("Please analyze the image above."))]}),
        "code_review" => {
            let code = arg("code").ok_or("missing argument code")?;
            let lang = arg("language").unwrap_or_else(|| "the given language".to_owned());
            json!({"description": "Code review", "messages": [user(text(format!(
                "Please review this code written in {lang}:\n\n{code}")))]})
        }
        _ => return Err(format!("Unknown prompt: {}", truncate(name, 64))),
    })
}

/// `completion/complete`.
pub fn complete(params: &Value) -> Value {
    let arg_name = params.pointer("/argument/name").and_then(Value::as_str);
    let prefix = params
        .pointer("/argument/value")
        .and_then(Value::as_str)
        .unwrap_or("");
    let candidates: &[&str] = match arg_name {
        Some("arg1" | "arg2") => &["paris", "park", "party", "test", "testValue"],
        Some("language") => &["rust", "python", "go", "typescript"],
        Some("name") => &["alice", "bob", "carol"],
        Some("id") => &["1", "123", "456"],
        _ => &[],
    };
    let values: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|c| c.starts_with(prefix))
        .collect();
    json!({"completion": {"values": values, "total": values.len(), "hasMore": false}})
}
