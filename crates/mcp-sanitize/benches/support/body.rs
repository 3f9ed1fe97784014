//! The `tools/call` body shared by the sanitize bench and the callgrind example.

use serde_json::json;

const WORDS: &[&str] = &[
    "the",
    "gateway",
    "forwards",
    "tool",
    "arguments",
    "to",
    "an",
    "upstream",
    "server",
    "which",
    "queries",
    "a",
    "database",
    "and",
    "returns",
    "rows",
    "of",
    "results",
    "café",
    "naïve",
    "résumé",
    "über",
    "select",
    "from",
    "where",
    "order",
    "by",
    "limit",
    "user's",
    "report",
    "2024-05-01",
    "42",
    "3.14",
    "(draft)",
    "e-mail",
    "path/to/file.txt",
];

/// A realistic `tools/call` body of about `target` bytes: nested arguments, prose strings
/// under the 1000-character limit, some URLs and numbers.
pub fn body(target: usize) -> Vec<u8> {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut sentence = |len: usize| {
        let mut s = String::new();
        while s.len() < len {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
        }
        s
    };
    let mut docs = Vec::new();
    let mut i = 0;
    loop {
        let doc = json!({
            "id": i,
            "title": sentence(40),
            "url": format!("https://docs.example.com/articles/{i}?ref=search&page=2"),
            "text": sentence(600),
            "tags": ["alpha", "beta", format!("t{i}")],
            "meta": {"score": 0.75, "visible": true, "author": sentence(12)}
        });
        docs.push(doc);
        i += 1;
        let v = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "index_documents", "arguments": {"collection": "kb", "documents": docs}}});
        let bytes = serde_json::to_vec(&v).unwrap();
        if bytes.len() >= target {
            return bytes;
        }
    }
}
