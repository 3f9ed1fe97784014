//! The gateway's YAML configuration loader (`examples/gateway/src/config.rs`: YAML
//! syntax, `${VAR}` expansion, `MCP_GATEWAY_*` environment overrides, typed
//! deserialization, the keys the gateway refuses, line finding for errors).
//!
//! The gateway is a binary crate: its `config.rs` (and `proxy.rs`, which it uses to show
//! upstream URLs) are compiled into this target as modules, unchanged.
//!
//! Input: YAML text. The environment the loader sees is fixed: `FUZZ_A=a`,
//! `FUZZ_SECRET=CANARY-0badf00d`, `MCP_GATEWAY_SERVER_ADDR=127.0.0.1:9`, nothing else.
//! Properties: no panic, no hang; the result is deterministic; an error's line is within
//! the text; a successfully loaded configuration formats (`Debug`), reports its inert
//! settings and builds its result-redaction configuration.
#![no_main]
#![allow(dead_code, unused_imports, clippy::all)]

#[path = "../../examples/gateway/src/config.rs"]
mod config;
#[path = "../../examples/gateway/src/proxy.rs"]
mod proxy;
#[path = "../../examples/gateway/src/yaml_bounds.rs"]
mod yaml_bounds;

use libfuzzer_sys::fuzz_target;

fn env(name: &str) -> Option<String> {
    match name {
        "FUZZ_A" => Some("a".to_owned()),
        "FUZZ_SECRET" => Some("CANARY-0badf00d".to_owned()),
        "MCP_GATEWAY_SERVER_ADDR" => Some("127.0.0.1:9".to_owned()),
        _ => None,
    }
}

fn summary(r: &Result<config::Loaded, config::ConfigError>) -> String {
    match r {
        Ok(l) => format!("ok {:?}", l.config),
        Err(e) => format!("err {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = config::parse(text, "fuzz.yaml", &env);
    let second = config::parse(text, "fuzz.yaml", &env);
    assert_eq!(summary(&first), summary(&second), "not deterministic");
    // Lines as YAML counts them (LF, CR LF or a lone CR).
    let lines = config::yaml_text_lines(text).count() + 1;
    match first {
        Err(config::ConfigError::Invalid { line, .. }) => {
            assert!(
                line <= lines,
                "error line {line} past the end ({lines} lines)"
            );
        }
        Err(config::ConfigError::Rule { line, .. }) => {
            assert!(
                line.unwrap_or(0) <= lines,
                "error line {line:?} past the end"
            );
        }
        Err(config::ConfigError::Read { .. }) => unreachable!("parse reads no file"),
        Ok(loaded) => {
            let _ = format!("{:?}", loaded.config);
            let _ = loaded.inert_settings();
            let _ = loaded.config.result_redaction.scan_config();
            for key in ["server.addr", "upstreams[0].url", "auth.apiKeys", "a.b.c"] {
                let _ = loaded.error(key, "fuzz");
            }
        }
    }
    for key in ["server", "server.addr", "upstreams[0].name", "x"] {
        if let Some(line) = config::find_line(text, key) {
            assert!(line <= lines, "find_line {key} gave line {line} of {lines}");
        }
    }
});
