//! The false-positive and attack rates of the argument rules, measured on committed
//! corpora (`tests/corpus/benign.txt`, `tests/corpus/attacks.txt`) with the default
//! configuration: every attack line must be refused, as an argument value and as an
//! object key, in `tools/call`, `prompts/get` and `completion/complete`; the share of
//! benign lines refused must stay at or below [`MAX_BENIGN_REFUSED`]. Both rates are
//! printed (`cargo test -p mcp-sanitize --test corpora -- --nocapture`).
//!
//! Corpus format: one value per line; blank lines and lines starting with `#` are
//! skipped; a line starting with `json:` is a JSON string literal (for tabs, newlines and
//! escapes), any other line is taken as it is.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use mcp_core::{McpHeaders, McpRequest};
use mcp_sanitize::{SanitizeConfig, SanitizeLayer};
use serde_json::{Value, json};

/// The highest share of benign lines the default rules may refuse: 5 %. The corpus is
/// written to sit close to the rules (SQL questions, shell words, `;` `|` `&&` in prose,
/// markdown tables, code snippets, paths and URLs), not sampled from traffic, so its rate
/// is an upper bound for ordinary arguments. What it refuses is syntax the rules cannot
/// tell from an attack without knowing the tool: code (`println!("hi");` ends a string
/// and a statement as `'; --` does, `a && b`, `${x}`), sentences quoting attack syntax
/// (`a || b`, `javascript:`, `/etc/passwd`) and a relative `../` path. The rates per
/// section are printed; every section but code together may not exceed 3.5 %. Tools that
/// take code or free text exempt the rules they trip (`tool_overrides`).
const MAX_BENIGN_REFUSED: f64 = 0.05;

/// The highest share of the prose, markdown, file name and URL lines (every section but
/// code) the default rules may refuse. (3 % until the section of lines written against
/// the shell view and the supplementary patterns was added: its two refused lines, a
/// markdown `` `ls` `` and a quote before `#3`, are refused by the older patterns, a
/// backtick before a command and a quote before a MySQL comment.)
const MAX_PROSE_REFUSED: f64 = 0.035;

/// The values of a corpus file, each with its section (the last `# --- name` line).
fn sectioned(file: &str) -> Vec<(String, String)> {
    let path = format!("{}/tests/corpus/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut section = String::from("all");
    let mut out = Vec::new();
    for l in text.lines() {
        if let Some(name) = l.strip_prefix("# --- ") {
            section = name.trim().to_owned();
            continue;
        }
        if l.trim().is_empty() || l.starts_with('#') {
            continue;
        }
        let value = match l.strip_prefix("json:") {
            Some(j) => serde_json::from_str::<String>(j.trim())
                .unwrap_or_else(|e| panic!("{file}: bad json line {l:?}: {e}")),
            None => l.to_owned(),
        };
        out.push((section.clone(), value));
    }
    out
}

fn lines(file: &str) -> Vec<String> {
    sectioned(file).into_iter().map(|(_, v)| v).collect()
}

fn request(method: &str, params: Value) -> McpRequest {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    McpRequest::parse(Bytes::from(body.to_string()), McpHeaders::default()).unwrap()
}

/// The requests that carry `s` as a client string: a tool argument value and key, a
/// prompt argument, a completion value.
fn carriers(s: &str) -> Vec<(&'static str, McpRequest)> {
    vec![
        (
            "tools/call value",
            request(
                "tools/call",
                json!({"name": "search", "arguments": {"q": s}}),
            ),
        ),
        (
            "tools/call key",
            request(
                "tools/call",
                json!({"name": "search", "arguments": {"filters": {s: 1}}}),
            ),
        ),
        (
            "prompts/get value",
            request(
                "prompts/get",
                json!({"name": "summarize", "arguments": {"text": s}}),
            ),
        ),
        (
            "completion/complete value",
            request(
                "completion/complete",
                json!({"ref": {"type": "ref/prompt", "name": "summarize"},
                       "argument": {"name": "topic", "value": s}}),
            ),
        ),
    ]
}

#[test]
fn attacks_are_refused_and_benign_text_passes() {
    let layer = SanitizeLayer::new(SanitizeConfig::default()).unwrap();
    let attacks = lines("attacks.txt");
    let benign = sectioned("benign.txt");
    assert!(attacks.len() >= 100, "attack corpus too small");
    assert!(benign.len() >= 300, "benign corpus too small");

    let mut missed = Vec::new();
    let mut refused_attacks = 0usize;
    for a in &attacks {
        let mut all = true;
        for (how, req) in carriers(a) {
            if layer.validate(&req).is_ok() {
                missed.push(format!("{how}: {a:?}"));
                all = false;
            }
        }
        refused_attacks += usize::from(all);
    }

    let mut false_positives = Vec::new();
    // Per section: (lines, refused).
    let mut sections: Vec<(String, usize, usize)> = Vec::new();
    for (section, b) in &benign {
        let req = request(
            "tools/call",
            json!({"name": "search", "arguments": {"q": b}}),
        );
        let refused = match layer.validate(&req) {
            Ok(None) => false,
            Ok(Some(_)) => panic!("a benign line was rewritten: {b:?}"),
            Err(r) => {
                false_positives.push(format!("[{section}] {b:?} ({:?})", r.detail()));
                true
            }
        };
        match sections.iter_mut().find(|(s, ..)| s == section) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += usize::from(refused);
            }
            None => sections.push((section.clone(), 1, usize::from(refused))),
        }
    }
    let attack_rate = refused_attacks as f64 / attacks.len() as f64;
    let fp_rate = false_positives.len() as f64 / benign.len() as f64;
    println!(
        "attack corpus: {refused_attacks}/{} refused in every carrier ({:.1} %)",
        attacks.len(),
        attack_rate * 100.0
    );
    println!(
        "benign corpus: {}/{} refused ({:.2} %), limit {:.1} %",
        false_positives.len(),
        benign.len(),
        fp_rate * 100.0,
        MAX_BENIGN_REFUSED * 100.0
    );
    for (section, n, refused) in &sections {
        println!(
            "  {section}: {refused}/{n} refused ({:.1} %)",
            *refused as f64 * 100.0 / *n as f64
        );
    }
    for f in &false_positives {
        println!("  refused benign: {f}");
    }
    let (prose_n, prose_refused) = sections
        .iter()
        .filter(|(s, ..)| s != "code snippets")
        .fold((0, 0), |(n, r), (_, sn, sr)| (n + sn, r + sr));
    let prose_rate = prose_refused as f64 / prose_n as f64;
    println!(
        "benign corpus without code: {prose_refused}/{prose_n} refused ({:.2} %), limit {:.1} %",
        prose_rate * 100.0,
        MAX_PROSE_REFUSED * 100.0
    );
    assert!(
        prose_rate <= MAX_PROSE_REFUSED,
        "prose refusal rate {:.2} % above {:.1} %",
        prose_rate * 100.0,
        MAX_PROSE_REFUSED * 100.0
    );
    assert!(missed.is_empty(), "attacks passed:\n{}", missed.join("\n"));
    assert!(
        fp_rate <= MAX_BENIGN_REFUSED,
        "benign refusal rate {:.2} % above {:.1} %:\n{}",
        fp_rate * 100.0,
        MAX_BENIGN_REFUSED * 100.0,
        false_positives.join("\n")
    );
}
