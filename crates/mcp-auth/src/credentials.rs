//! Parsers for the credentials a request carries: the `Authorization` header (RFC 9110
//! §11.6.2), Bearer tokens (RFC 6750 §2.1), Basic credentials (RFC 7617 §2) and API key
//! headers.
//!
//! Every parser is total: malformed input gives an error, never a panic, and the work
//! done is bounded by the input size limits.

use std::fmt;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, header::AUTHORIZATION};

use crate::secret::SecretString;

/// The largest `Authorization` or API key header value the parsers look at (16 KiB).
pub const MAX_CREDENTIAL_LEN: usize = 16 * 1024;

/// Why a credential could not be read. The message never contains the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedCredential {
    /// The header appears more than once.
    #[error("credential header repeated")]
    Repeated,
    /// The header value is not visible ASCII.
    #[error("credential header is not visible ASCII")]
    NotAscii,
    /// The value is longer than [`MAX_CREDENTIAL_LEN`] or the configured limit.
    #[error("credential too long")]
    TooLong,
    /// The scheme is followed by nothing, or by something that is not a token68.
    #[error("credentials are not a token68")]
    BadToken,
    /// The Basic credentials are not valid base64.
    #[error("basic credentials are not base64")]
    BadBase64,
    /// The decoded Basic credentials are not UTF-8.
    #[error("basic credentials are not UTF-8")]
    NotUtf8,
    /// The decoded Basic credentials have no colon.
    #[error("basic credentials have no colon")]
    NoColon,
    /// The user id or password contains a control character (RFC 7617 §2).
    #[error("basic credentials contain a control character")]
    ControlCharacter,
}

/// Whether `s` is a token68 (RFC 9110 §11.2), the syntax of Bearer tokens and Basic
/// credentials: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
pub fn is_token68(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// The single `Authorization` header as `(scheme, rest)`: `Ok(None)` when absent.
///
/// The scheme is compared case-insensitively by callers; `rest` is what follows the
/// scheme and its separating spaces (possibly empty). A repeated header is an error: two
/// credentials are ambiguous and a proxy may have added one.
pub fn authorization(headers: &HeaderMap) -> Result<Option<(&str, &str)>, MalformedCredential> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(MalformedCredential::Repeated);
    }
    if value.len() > MAX_CREDENTIAL_LEN {
        return Err(MalformedCredential::TooLong);
    }
    let value = value.to_str().map_err(|_| MalformedCredential::NotAscii)?;
    Ok(Some(split_scheme(value)))
}

/// Splits `scheme SP* rest`.
pub fn split_scheme(value: &str) -> (&str, &str) {
    let value = value.trim_matches([' ', '\t']);
    match value.find([' ', '\t']) {
        Some(i) => (&value[..i], value[i..].trim_start_matches([' ', '\t'])),
        None => (value, ""),
    }
}

/// The Bearer token of the `Authorization` header: `Ok(None)` when there is no
/// `Authorization` header or its scheme is not `Bearer` (any case).
///
/// ```
/// use http::HeaderMap;
/// use mcp_auth::credentials::bearer_token;
/// let mut h = HeaderMap::new();
/// h.insert("authorization", "bearer abc.def.ghi".parse().unwrap());
/// assert_eq!(bearer_token(&h), Ok(Some("abc.def.ghi")));
/// ```
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, MalformedCredential> {
    match authorization(headers)? {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
            if is_token68(rest) {
                Ok(Some(rest))
            } else {
                Err(MalformedCredential::BadToken)
            }
        }
        _ => Ok(None),
    }
}

/// Decoded Basic credentials. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    /// The user id.
    pub username: String,
    /// The password.
    pub password: SecretString,
}

impl fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// Decodes the token68 of a `Basic` authorization (RFC 7617 §2): base64 (padding
/// optional), UTF-8, split at the first colon (the password may contain colons, the
/// user id cannot), no control characters.
///
/// ```
/// use mcp_auth::credentials::decode_basic;
/// // "Aladdin:open:sesame"
/// let c = decode_basic("QWxhZGRpbjpvcGVuOnNlc2FtZQ==").unwrap();
/// assert_eq!(c.username, "Aladdin");
/// assert_eq!(c.password.expose(), "open:sesame");
/// ```
pub fn decode_basic(token68: &str) -> Result<BasicCredentials, MalformedCredential> {
    if token68.len() > MAX_CREDENTIAL_LEN {
        return Err(MalformedCredential::TooLong);
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(token68)
        .map_err(|_| MalformedCredential::BadBase64)?;
    let text = String::from_utf8(bytes).map_err(|_| MalformedCredential::NotUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(MalformedCredential::ControlCharacter);
    }
    let (user, pass) = text.split_once(':').ok_or(MalformedCredential::NoColon)?;
    Ok(BasicCredentials {
        username: user.to_owned(),
        password: SecretString::new(pass),
    })
}

/// The Basic credentials of the `Authorization` header: `Ok(None)` when there is no
/// `Authorization` header or its scheme is not `Basic` (any case).
pub fn basic_credentials(
    headers: &HeaderMap,
) -> Result<Option<BasicCredentials>, MalformedCredential> {
    match authorization(headers)? {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => {
            if !is_token68(rest) {
                return Err(MalformedCredential::BadToken);
            }
            decode_basic(rest).map(Some)
        }
        _ => Ok(None),
    }
}

/// The value of a single API key header (`name` is matched case-insensitively, as all
/// header names are). `Ok(None)` when absent; an error when repeated, not visible ASCII,
/// empty, or longer than `max_len`.
pub fn api_key<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    max_len: usize,
) -> Result<Option<&'a str>, MalformedCredential> {
    let mut all = headers.get_all(name).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(MalformedCredential::Repeated);
    }
    if value.len() > max_len.min(MAX_CREDENTIAL_LEN) {
        return Err(MalformedCredential::TooLong);
    }
    let s = value.to_str().map_err(|_| MalformedCredential::NotAscii)?;
    let s = s.trim_matches([' ', '\t']);
    if s.is_empty() {
        return Err(MalformedCredential::BadToken);
    }
    if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(MalformedCredential::NotAscii);
    }
    Ok(Some(s))
}

/// The query parameters that carry credentials by default and are refused
/// (RFC 6750 §2.3 `access_token`, and the usual API key names).
pub const DEFAULT_REFUSED_QUERY_PARAMS: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "api-key",
    "x-api-key",
    "token",
    "bearer",
];

/// The name of the first query parameter of `query` that is in `refused`, if any.
///
/// The whole query is read (no cap on the number of parameters), split at `&` **and**
/// `;` (some servers take either as a separator). Each name is normalized the ways a
/// parser might read it before the comparison: percent-decoded with `+` as a space
/// (repeatedly, so `access%255Ftoken` is caught too, and `%uXXXX` as ASP.NET decodes
/// it), surrounding spaces and control characters dropped, and a trailing `[...]`
/// (PHP-style arrays: `api_key[]`) removed. Names are then compared by their
/// [`query_name_skeleton`]: ASCII case-insensitive, with `-`, `_`, `.`, space and `[`
/// as one character, the ones PHP turns into `_` (`access.token` is
/// `$_GET['access_token']`) and a CGI-minded reader takes `-` for. Values are not
/// looked at: an empty value or a name without `=` is refused as well.
///
/// ```
/// use mcp_auth::credentials::refused_query_param;
/// let refused = vec!["access_token".to_owned(), "x-api-key".to_owned()];
/// for q in ["access.token=S", "access+token=S", "access%u005Ftoken=S", "x_api_key=S"] {
///     assert!(refused_query_param(q, &refused).is_some(), "{q}");
/// }
/// assert_eq!(refused_query_param("accesstoken=S", &refused), None);
/// ```
pub fn refused_query_param<'r>(query: &str, refused: &'r [String]) -> Option<&'r str> {
    let skeletons: Vec<String> = refused.iter().map(|r| query_name_skeleton(r)).collect();
    query
        .split(['&', ';'])
        .filter(|p| !p.is_empty())
        .find_map(|pair| {
            let raw = pair.split_once('=').map_or(pair, |(name, _)| name);
            let name = query_name_skeleton(&normalize_param_name(raw));
            skeletons
                .iter()
                .position(|r| *r == name)
                .and_then(|i| refused.get(i))
                .map(String::as_str)
        })
}

/// The form in which [`refused_query_param`] compares parameter names: ASCII lower
/// case, with each of `-`, `_`, `.`, space and `[` written `_` (PHP reads `.`, space
/// and an unclosed `[` in a name as `_`; CGI and many frameworks take `-` and `_` as
/// the same).
///
/// ```
/// use mcp_auth::credentials::query_name_skeleton;
/// assert_eq!(query_name_skeleton("X-API.Key"), query_name_skeleton("x_api_key"));
/// ```
pub fn query_name_skeleton(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '-' | '_' | '.' | ' ' | '[' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// A query parameter name as a lenient parser may read it (see [`refused_query_param`]).
fn normalize_param_name(raw: &str) -> String {
    let mut name = raw.replace('+', " ");
    // Percent-decoding until nothing changes; each round shortens the name, and a few
    // rounds are enough for any double or triple encoding.
    for _ in 0..4 {
        if !name.contains('%') {
            break;
        }
        let decoded = percent_decode(&name);
        if decoded == name {
            break;
        }
        name = decoded;
    }
    let mut name = name.trim_matches(|c: char| c.is_whitespace() || c.is_control());
    if let Some(open) = name.find('[')
        && name.ends_with(']')
    {
        name = &name[..open];
    }
    name.trim_matches(|c: char| c.is_whitespace() || c.is_control())
        .to_owned()
}

/// Percent-decodes `s`, `%uXXXX` (ASP.NET) included (invalid escapes kept as is;
/// invalid UTF-8 replaced).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 5 < b.len()
            && (b[i + 1] == b'u' || b[i + 1] == b'U')
            && let Some(c) = b[i + 2..i + 6]
                .iter()
                .try_fold(0u32, |acc, &d| hex(d).map(|d| acc << 4 | u32::from(d)))
                .and_then(char::from_u32)
        {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            i += 6;
        } else if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(&hm(&[])), Ok(None));
        assert_eq!(
            bearer_token(&hm(&[("authorization", "Basic abc")])),
            Ok(None)
        );
        assert_eq!(
            bearer_token(&hm(&[("authorization", "BEARER   a-b_c.d~e+f/g==")])),
            Ok(Some("a-b_c.d~e+f/g=="))
        );
        assert_eq!(
            bearer_token(&hm(&[("authorization", "Bearer")])),
            Err(MalformedCredential::BadToken)
        );
        assert_eq!(
            bearer_token(&hm(&[("authorization", "Bearer a b")])),
            Err(MalformedCredential::BadToken)
        );
        assert_eq!(
            bearer_token(&hm(&[("authorization", "Bearer a=b")])),
            Err(MalformedCredential::BadToken)
        );
        assert_eq!(
            bearer_token(&hm(&[
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b")
            ])),
            Err(MalformedCredential::Repeated)
        );
    }

    #[test]
    fn basic_parsing() {
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let c = decode_basic(&enc("alice:pa:ss:word")).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.expose()),
            ("alice", "pa:ss:word")
        );
        let c = decode_basic(&enc("jösé:pässwörd")).unwrap();
        assert_eq!(c.username, "jösé");
        let c = decode_basic(&enc(":")).unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("", ""));
        assert_eq!(
            decode_basic(&enc("nocolon")),
            Err(MalformedCredential::NoColon)
        );
        assert_eq!(decode_basic("!!!"), Err(MalformedCredential::BadBase64));
        assert_eq!(
            decode_basic(&base64::engine::general_purpose::STANDARD.encode([0xff, b':', 0xfe])),
            Err(MalformedCredential::NotUtf8)
        );
        assert_eq!(
            decode_basic(&enc("a\u{0}b:c")),
            Err(MalformedCredential::ControlCharacter)
        );
        // unpadded is accepted
        let unpadded = enc("ab:c").trim_end_matches('=').to_owned();
        assert_eq!(decode_basic(&unpadded).unwrap().username, "ab");
        let h = hm(&[("authorization", &format!("basic {}", enc("u:p")))]);
        assert_eq!(basic_credentials(&h).unwrap().unwrap().username, "u");
        assert!(!format!("{:?}", decode_basic(&enc("u:topsecret")).unwrap()).contains("topsecret"));
    }

    #[test]
    fn api_key_header() {
        let name = HeaderName::from_static("x-api-key");
        assert_eq!(
            api_key(&hm(&[("X-Api-Key", "k")]), &name, 64),
            Ok(Some("k"))
        );
        assert_eq!(api_key(&hm(&[]), &name, 64), Ok(None));
        assert_eq!(
            api_key(&hm(&[("x-api-key", "a"), ("X-API-KEY", "b")]), &name, 64),
            Err(MalformedCredential::Repeated)
        );
        assert_eq!(
            api_key(&hm(&[("x-api-key", &"a".repeat(65))]), &name, 64),
            Err(MalformedCredential::TooLong)
        );
        assert_eq!(
            api_key(&hm(&[("x-api-key", "a b")]), &name, 64),
            Err(MalformedCredential::NotAscii)
        );
    }

    #[test]
    fn query_refusal() {
        let refused: Vec<String> = DEFAULT_REFUSED_QUERY_PARAMS
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            refused_query_param("a=1&access_token=x", &refused),
            Some("access_token")
        );
        assert_eq!(
            refused_query_param("API%5FKEY=x", &refused),
            Some("api_key")
        );
        assert_eq!(refused_query_param("a=1&b=2", &refused), None);
        assert_eq!(refused_query_param("", &refused), None);
        let many: String = (0..1000).map(|i| format!("p{i}=v&")).collect();
        for q in [
            "a=1;access_token=x".to_owned(),
            format!("{many}access_token=x"),
            format!("{}api_key=x", many.replace('&', ";")),
            "access%5Ftoken=x".to_owned(),
            "access%5ftoken".to_owned(),
            "access%255Ftoken=x".to_owned(),
            "%2561ccess_token=x".to_owned(),
            "ACCESS_TOKEN=".to_owned(),
            "access_token+=x".to_owned(),
            "+access_token=x".to_owned(),
            "access_token%00=x".to_owned(),
            "api_key[]=x".to_owned(),
            "api_key[0]=x".to_owned(),
            "a&&;;access_token".to_owned(),
            "access_token=a&access_token=b".to_owned(),
        ] {
            assert!(refused_query_param(&q, &refused).is_some(), "{q}");
        }
        for q in [
            "access.token=S",
            "access+token=S",
            "access%20token=S",
            "access%2Etoken=S",
            "access[token=S",
            "api.key=S",
            "API KEY=S",
            "x_api_key=S",
            "x.api-key=S",
            "access%u005Ftoken=S",
            "access%U005ftoken=S",
            "%u0061ccess_token=S",
            "access%25u005Ftoken=S",
        ] {
            assert!(refused_query_param(q, &refused).is_some(), "{q}");
        }
        let with_header: Vec<String> = vec!["x-mcp-key".into()];
        for q in ["x_mcp_key=1", "X.MCP.KEY=1", "x%20mcp%5Bkey=1"] {
            assert!(refused_query_param(q, &with_header).is_some(), "{q}");
        }
        for q in [
            "accesstoken=1",
            "access__token=1",
            "access%u00=1",
            "%u=1",
            "tokens=1",
            "my_access_token=1",
            "a=access_token",
            "access_tokenx=1",
            "%zz=1",
            "%",
        ] {
            assert_eq!(refused_query_param(q, &refused), None, "{q}");
        }
    }

    proptest! {
        #[test]
        fn authorization_parser_total(v in "[ -~\t]{0,200}") {
            if let Ok(value) = http::HeaderValue::from_str(&v) {
                let mut h = HeaderMap::new();
                h.insert(AUTHORIZATION, value);
                let _ = authorization(&h);
                if let Ok(Some(t)) = bearer_token(&h) {
                    prop_assert!(is_token68(t));
                }
                let _ = basic_credentials(&h);
            }
        }

        #[test]
        fn basic_round_trip(user in "[^:\\p{Cc}]{0,40}", pass in "[^\\p{Cc}]{0,40}") {
            let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            let c = decode_basic(&enc).unwrap();
            prop_assert_eq!(c.username, user);
            prop_assert_eq!(c.password.expose(), pass.as_str());
        }

        #[test]
        fn basic_decoder_total(s in "\\PC{0,100}") {
            let _ = decode_basic(&s);
        }

        #[test]
        fn api_key_parser_total(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(value) = http::HeaderValue::from_bytes(&bytes) {
                let mut h = HeaderMap::new();
                h.insert("x-api-key", value);
                let name = HeaderName::from_static("x-api-key");
                if let Ok(Some(k)) = api_key(&h, &name, 64) {
                    prop_assert!(!k.is_empty() && k.bytes().all(|b| (0x21..=0x7e).contains(&b)));
                }
            }
        }

        /// A refused name, in any case, percent-encoded or not, after any number of
        /// parameters joined by `&` or `;`, with any value, is refused.
        #[test]
        fn refused_name_is_found_wherever_it_is(
            before in proptest::collection::vec(("[a-z0-9]{1,8}", "[a-zA-Z0-9%+=]{0,8}"), 0..400),
            seps in proptest::collection::vec(prop_oneof![Just('&'), Just(';')], 400),
            name_idx in 0..DEFAULT_REFUSED_QUERY_PARAMS.len(),
            case_mask in any::<u64>(),
            encode_mask in any::<u64>(),
            value in "[a-zA-Z0-9%+]{0,12}",
            with_eq in any::<bool>(),
        ) {
            let refused: Vec<String> = DEFAULT_REFUSED_QUERY_PARAMS.iter().map(|s| s.to_string()).collect();
            let name = DEFAULT_REFUSED_QUERY_PARAMS[name_idx];
            let written: String = name.chars().enumerate().map(|(i, c)| {
                let c = if case_mask >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c };
                if encode_mask >> (i % 64) & 1 == 1 { format!("%{:02X}", c as u32) } else { c.to_string() }
            }).collect();
            let mut q = String::new();
            for (i, (k, v)) in before.iter().enumerate() {
                // A filler is never a refused name.
                let k = format!("f{k}");
                q.push_str(&k);
                q.push('=');
                q.push_str(v);
                q.push(seps[i]);
            }
            q.push_str(&written);
            if with_eq {
                q.push('=');
                q.push_str(&value);
            }
            prop_assert!(refused_query_param(&q, &refused).is_some(), "{}", q);
        }

        /// A refused name with any of its separators written as any of the characters a
        /// PHP, ASP.NET or CGI reader takes for `_` (`-`, `_`, `.`, space as `+` or
        /// `%20`, `[`, `%2E`, `%u005F`), in any case, is refused; the skeleton of a
        /// name without a separator differs.
        #[test]
        fn separator_spellings_are_refused(
            name_idx in 0..DEFAULT_REFUSED_QUERY_PARAMS.len(),
            picks in proptest::collection::vec(0usize..9, 8),
            upper in any::<u64>(),
        ) {
            let mut refused: Vec<String> = DEFAULT_REFUSED_QUERY_PARAMS.iter().map(|s| s.to_string()).collect();
            refused.push("x-mcp-key".into());
            let idx = name_idx.min(refused.len() - 1);
            let name = refused[idx].clone();
            let seps = ["-", "_", ".", "+", "%20", "[", "%2E", "%u005F", "%5F"];
            let mut k = 0;
            let written: String = name.chars().enumerate().map(|(i, c)| {
                if c == '-' || c == '_' {
                    k += 1;
                    seps[picks[(k - 1) % picks.len()]].to_owned()
                } else if upper >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase().to_string()
                } else {
                    c.to_string()
                }
            }).collect();
            let q = format!("a=1&{written}=v");
            prop_assert!(refused_query_param(&q, &refused).is_some(), "{}", q);
            let joined: String = name.chars().filter(|c| *c != '-' && *c != '_').collect();
            if joined != name {
                prop_assert_ne!(query_name_skeleton(&joined), query_name_skeleton(&name));
            }
        }

        #[test]
        fn query_parser_total(q in "\\PC{0,100}") {
            let refused = vec!["access_token".to_owned()];
            let _ = refused_query_param(&q, &refused);
        }
    }
}
