//! The configuration file is read with bounded memory and time, whatever it holds.
//!
//! - The file is at most [`MAX_FILE_BYTES`]; a longer one is refused before parsing.
//! - Flow collections (`[`, `{`) may nest [`MAX_FLOW_DEPTH`] levels and block content may
//!   start at column [`MAX_BLOCK_COLUMN`] at most: checked by a linear scan before the YAML
//!   parser runs (libyaml's parser is quadratic in the flow depth: a 200 KB file of
//!   brackets took tens of seconds; deep block nesting costs memory per level).
//! - The document is built by a visitor that charges every node and scalar, as the
//!   aliases replay them, to a budget of [`MAX_DOCUMENT_BYTES`]: an alias bomb (nested
//!   aliases, or aliases of a long string) stops at the budget, before memory grows.
//! - `${VAR}` values are scalars ([`env_scalar`]): a number or a boolean alone in
//!   `${VAR}` becomes one; anything else stays the string it is, never parsed as YAML.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde_yaml_ng::value::{Tag, TaggedValue};
use serde_yaml_ng::{Mapping, Number, Value};

/// The largest configuration file read (1 MiB).
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// The deepest nesting of flow collections (`[`, `{`).
pub const MAX_FLOW_DEPTH: usize = 64;
/// The rightmost column where block content may start (deeper block nesting is refused).
pub const MAX_BLOCK_COLUMN: usize = 256;
/// The size of the document once aliases are replayed: scalar bytes plus
/// [`NODE_COST`] per node (16 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;
/// What each node (scalar, sequence, mapping) costs in the document budget.
const NODE_COST: usize = 32;
/// The largest value of one `${VAR}` (64 KiB).
pub const MAX_ENV_VALUE_BYTES: usize = 64 * 1024;
/// The most bytes `${VAR}` expansion may add to the whole document (1 MiB).
pub const MAX_EXPANSION_BYTES: usize = 1024 * 1024;

/// A refusal: the 1-based line (0 when unknown) and the message.
#[derive(Debug)]
pub struct Refusal {
    pub line: usize,
    pub message: String,
}

/// Parses `text` into a YAML value within the bounds above.
pub fn parse(text: &str) -> Result<Value, Refusal> {
    if text.len() > MAX_FILE_BYTES {
        return Err(Refusal {
            line: 0,
            message: format!(
                "the file is larger than {MAX_FILE_BYTES} bytes (the cap on a configuration file)"
            ),
        });
    }
    scan_nesting(text)?;
    let budget = Cell::new(MAX_DOCUMENT_BYTES);
    let de = serde_yaml_ng::Deserializer::from_str(text);
    Seed { budget: &budget }.deserialize(de).map_err(|e| {
        let mut message = e.to_string();
        if message.contains("repetition limit exceeded") {
            // The YAML crate's own bound on the number of alias replays.
            message = "aliases replayed too many times (an alias bomb?): repetition limit \
                       exceeded"
                .to_owned();
        }
        Refusal {
            line: e.location().map_or(0, |l| l.line()),
            message,
        }
    })
}

fn too_deep(line: usize, what: String) -> Refusal {
    Refusal {
        line,
        message: format!("nested too deeply: {what}"),
    }
}

/// A linear scan for the nesting depth, before any parsing: flow collections are
/// counted outside quoted scalars, comments and plain scalars; block content by the
/// column where it starts (after indentation and `- `, `? `, `: ` indicators).
fn scan_nesting(text: &str) -> Result<(), Refusal> {
    let mut depth = 0usize;
    // The quote of a quoted scalar still open at the end of the previous line.
    let mut quote: Option<u8> = None;
    // Lines more indented than this belong to a block scalar (`|`, `>`).
    let mut block_scalar: Option<usize> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let b = line.as_bytes();
        let indent = b.iter().take_while(|c| **c == b' ').count();
        if let Some(parent) = block_scalar {
            if indent > parent || b[indent..].iter().all(|c| c.is_ascii_whitespace()) {
                continue;
            }
            block_scalar = None;
        }
        let mut j = 0;
        // In block context, skip the indentation and the indicators before the content.
        let mut node_start = depth == 0 && quote.is_none();
        if node_start {
            j = indent;
            while j + 1 < b.len() && matches!(b[j], b'-' | b'?' | b':') && b[j + 1] == b' ' {
                j += 2;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
            }
            if j > MAX_BLOCK_COLUMN && j < b.len() && b[j] != b'#' {
                return Err(too_deep(
                    n,
                    format!("block content starts at column {j} (at most {MAX_BLOCK_COLUMN})"),
                ));
            }
        }
        while j < b.len() {
            let c = b[j];
            if let Some(q) = quote {
                match c {
                    b'\\' if q == b'"' => j += 1,
                    b'\'' if q == b'\'' && b.get(j + 1) == Some(&b'\'') => j += 1,
                    _ if c == q => {
                        quote = None;
                        node_start = false;
                    }
                    _ => {}
                }
                j += 1;
                continue;
            }
            let after_space = j == 0 || matches!(b[j - 1], b' ' | b'\t');
            match c {
                b'#' if after_space => break,
                b' ' | b'\t' => {}
                b'"' | b'\'' if node_start || depth > 0 => quote = Some(c),
                b'[' | b'{' if node_start || depth > 0 => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Err(too_deep(
                            n,
                            format!("flow collections nested over {MAX_FLOW_DEPTH} levels"),
                        ));
                    }
                    node_start = true;
                }
                b']' | b'}' if depth > 0 => {
                    depth -= 1;
                    node_start = false;
                }
                b',' if depth > 0 => node_start = true,
                b':' if b.get(j + 1).is_none_or(|x| matches!(x, b' ' | b'\t')) || depth > 0 => {
                    node_start = true
                }
                b'-' | b'?' if node_start && b.get(j + 1).is_none_or(|x| *x == b' ') => {}
                b'&' | b'!' if node_start => {
                    // An anchor or a tag: skip to its end; the node follows.
                    while j + 1 < b.len() && !matches!(b[j + 1], b' ' | b'\t') {
                        j += 1;
                    }
                }
                b'|' | b'>' if node_start && depth == 0 => {
                    block_scalar = Some(indent);
                    break;
                }
                // A plain scalar: in block context a key (its `: ` follows) or a value
                // running to the end of the line or to a comment.
                _ => node_start = false,
            }
            j += 1;
        }
    }
    Ok(())
}

/// Builds a [`Value`], charging every node to the budget as the aliases replay it.
#[derive(Clone, Copy)]
struct Seed<'a> {
    budget: &'a Cell<usize>,
}

impl Seed<'_> {
    fn charge<E: de::Error>(&self, bytes: usize) -> Result<(), E> {
        let cost = NODE_COST.saturating_add(bytes);
        let left = self.budget.get();
        if cost > left {
            return Err(E::custom(format!(
                "the document is larger than {MAX_DOCUMENT_BYTES} bytes once its aliases are \
                 expanded (an alias bomb?)"
            )));
        }
        self.budget.set(left - cost);
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(Number::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(Number::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Number(Number::from(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Sequence(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut out = Mapping::new();
        while let Some(k) = map.next_key_seed(self)? {
            let v = map.next_value_seed(self)?;
            if out.contains_key(&k) {
                let key = match &k {
                    Value::String(s) => format!(" with key {s:?}"),
                    _ => String::new(),
                };
                return Err(de::Error::custom(format!("duplicate entry{key}")));
            }
            out.insert(k, v);
        }
        Ok(Value::Mapping(out))
    }
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        use de::VariantAccess;
        let (tag, contents): (String, _) = data.variant()?;
        self.charge(tag.len())?;
        let value = contents.newtype_variant_seed(self)?;
        Ok(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        })))
    }
}

/// The value of a whole `${VAR}` under a non-secret key: a number or a boolean when the
/// text is one (as YAML would read it), else `None` (the caller keeps the string). Only a
/// short text of letters, digits and `.+-_` is resolved, so that nothing in it can be
/// YAML structure (a collection, an alias, a tag, a second document).
pub fn env_scalar(text: &str) -> Option<Value> {
    let t = text.trim();
    if t.is_empty()
        || t.len() > 64
        || !t
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-' | b'_'))
    {
        return None;
    }
    match serde_yaml_ng::from_str::<Value>(t) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => Some(v),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_documents_parse_as_before() {
        for text in [
            "a: 1\nb: [1, 2, {c: d}]\n",
            "a: &x {k: v}\nb: *x\n",
            "list:\n  - one\n  - - nested\n    - two\n",
            "s: 'it''s [not'\nt: \"q [\\\" {\"\nu: plain [ text { here\n",
            "k: |\n  [[[[[[\n  {{{{\nnext: 1\n",
            "# [ comment\nk: v # { comment\n",
            "tagged: !custom {a: 1}\n",
        ] {
            let ours = parse(text).unwrap();
            let theirs: Value = serde_yaml_ng::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn plain_scalars_with_brackets_do_not_count_as_nesting() {
        let mut text = String::new();
        for i in 0..200 {
            text.push_str(&format!("k{i}: a[b{{c\n"));
        }
        let mut list = "patterns:\n".to_owned();
        for _ in 0..200 {
            list.push_str("  - \\[x\n");
        }
        assert!(parse(&text).is_ok());
        assert!(parse(&list).is_ok());
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let e = parse(&format!("a: {}", "[".repeat(65))).unwrap_err();
        assert!(e.message.contains("nested too deeply"), "{e:?}");
        assert_eq!(e.line, 1);
        assert!(parse(&format!("a: {}{}", "[".repeat(60), "]".repeat(60))).is_ok());
        let e = parse(&format!("a:\n  {}x\n", "- ".repeat(200))).unwrap_err();
        assert!(e.message.contains("nested too deeply"), "{e:?}");
        assert_eq!(e.line, 2);
    }

    #[test]
    fn alias_replays_are_charged() {
        let mut y = "a0: &a0 [\"lol\"]\n".to_owned();
        for i in 1..10 {
            let p = i - 1;
            y.push_str(&format!(
                "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
            ));
        }
        let e = parse(&y).unwrap_err();
        assert!(e.message.contains("alias"), "{e:?}");
        let long = "x".repeat(100_000);
        let y = format!(
            "s: &s \"{long}\"\nl: &l [*s,*s,*s,*s,*s,*s,*s,*s,*s,*s]\nm: [*l,*l,*l,*l,*l,*l,*l,*l,*l,*l,*l,*l,*l,*l,*l,*l,*l,*l,*l,*l]\n"
        );
        let e = parse(&y).unwrap_err();
        assert!(e.message.contains("alias"), "{e:?}");
    }

    #[test]
    fn environment_scalars() {
        assert_eq!(env_scalar("42"), Some(Value::Number(42.into())));
        assert_eq!(env_scalar(" true "), Some(Value::Bool(true)));
        assert_eq!(env_scalar("1.5"), Some(Value::Number(Number::from(1.5))));
        for s in [
            "[1, 2]",
            "{a: 1}",
            "&a x",
            "*a",
            "yes please",
            "0.0.0.0:80",
            "abc",
            "",
        ] {
            assert_eq!(env_scalar(s), None, "{s}");
        }
    }
}
