//! Identities that cannot pose as others, over real TLS and HTTP sockets: a SPIFFE ID
//! comes only from one URI SAN (a common name that looks like one is not one, two are
//! refused), the mTLS allow-list checks the value that becomes the principal, and
//! principals are namespaced by how they were proven, in the policy, the rate limits and
//! the audit trail (a certificate `CN=ops`, a Basic user `ops` and the API key `ops` are
//! three principals; so are the same JWT `sub` from two issuers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

struct Ca(CertifiedIssuer<'static, KeyPair>);

/// What a client certificate carries.
#[derive(Default)]
struct Subject<'a> {
    cn: Option<&'a str>,
    uris: &'a [&'a str],
    dns: &'a [&'a str],
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self(CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap())
    }

    fn server(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn client(&self, s: &Subject) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some(cn) = s.cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        for u in s.uris {
            p.subject_alt_names
                .push(SanType::URI(u.to_string().try_into().unwrap()));
        }
        for d in s.dns {
            p.subject_alt_names
                .push(SanType::DnsName(d.to_string().try_into().unwrap()));
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// An HTTPS client trusting this CA, presenting `subject`'s certificate if given.
    fn https(&self, subject: Option<&Subject>) -> reqwest::Client {
        ring();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.0.pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let cfg = match subject {
            Some(s) => {
                let (c, k) = self.client(s);
                b.with_client_auth_cert(
                    CertificateDer::pem_slice_iter(c.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap(),
                    PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap(),
                )
                .unwrap()
            }
            None => b.with_no_client_auth(),
        };
        reqwest::Client::builder()
            .use_preconfigured_tls(cfg)
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .unwrap()
    }
}

fn write(dir: &Path, name: &str, s: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p.to_str().unwrap().to_owned()
}

/// A TLS gateway trusting `ca` for client certificates (`client_auth`: required or
/// optional) with `auth` (the lines under `auth:`) and `extra` top-level sections.
fn tls_config(
    dir: &Path,
    ca: &Ca,
    client_auth: &str,
    upstream: &str,
    auth: &str,
    extra: &str,
) -> String {
    let (cert, key) = ca.server();
    let cert_f = write(dir, "server.pem", &cert);
    let key_f = write(dir, "server.key", &key);
    let ca_f = write(dir, "ca.pem", &ca.0.pem());
    format!(
        r#"server:
  addr: "127.0.0.1:0"
  tls:
    certFile: "{cert_f}"
    keyFile: "{key_f}"
    clientAuth: {client_auth}
    caFile: "{ca_f}"
auth:
{auth}audit:
  enabled: true
  database:
    sqlitePath: "{}"
upstreams:
  - name: demo
    path: /mcp
    url: "{upstream}"
{extra}"#,
        dir.join("a.db").display()
    )
}

/// The status of an `echo` call with `c`, plus `headers`.
async fn echo(c: &reqwest::Client, base: &str, headers: &[(&str, &str)]) -> u16 {
    echo_code(c, base, headers).await.0
}

/// The status of an `echo` call and its JSON-RPC error code (0 when none).
async fn echo_code(c: &reqwest::Client, base: &str, headers: &[(&str, &str)]) -> (u16, i64) {
    let mut b = call_tool(c, &format!("{base}/mcp"), "echo", json!({"message": "hi"}));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = b.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    let code = messages(&body)
        .last()
        .and_then(|m| m["error"]["code"].as_i64())
        .unwrap_or(0);
    (status, code)
}

/// A certificate refused by authentication: with mTLS alone there is no HTTP challenge
/// to send, so 403 with the JSON-RPC code of a failed authentication.
const CERT_REFUSED: (u16, i64) = (403, -32001);
/// Authenticated, refused by the policy.
const POLICY_REFUSED: (u16, i64) = (403, -32003);

/// The status and code of an `echo` call with certificate client `c`.
async fn cert_call(c: &reqwest::Client, base: &str) -> (u16, i64) {
    echo_code(c, base, &[]).await
}

/// Users of the audit rows of served or refused requests.
fn users(db: &Path) -> Vec<String> {
    request_rows(db)
        .into_iter()
        .filter_map(|r| r.user)
        .collect()
}

/// The mTLS gateway of the SPIFFE tests: admin's SPIFFE ID holds `mcp:tools`, nobody
/// else holds a scope, and the policy asks for `mcp:tools`.
fn spiffe_gateway(dir: &Path, ca: &Ca, identity: &str, allow: &str) -> (Proc, Proc, String) {
    let (up, upstream) = start_upstream(dir);
    let auth = format!(
        "  enabled: true\n  mode: mtls\n  mtls:\n    identity: {identity}\n{allow}    scopes:\n      \"spiffe://example.org/ns/prod/sa/admin\": [\"mcp:tools\"]\n      admin: [\"mcp:tools\"]\n      \"svc.example.com\": [\"mcp:tools\"]\n"
    );
    let policy =
        "policy:\n  allow:\n    - {name: tools, scopes: [\"mcp:tools\"], tools: [\"echo\"]}\n";
    let yaml = per_request_audit(&tls_config(
        dir,
        ca,
        "RequireAndVerifyClientCert",
        &upstream,
        &auth,
        policy,
    ));
    let (gw, base) = start_gateway(dir, &yaml);
    (up, gw, base.replace("127.0.0.1", "localhost"))
}

const ADMIN: &str = "spiffe://example.org/ns/prod/sa/admin";

#[tokio::test]
async fn common_name_that_looks_like_a_spiffe_id_is_not_one() {
    let dir = tempdir();
    let ca = Ca::new("test CA");
    let (_up, _gw, base) = spiffe_gateway(dir.path(), &ca, "spiffe_id_or_common_name", "");
    // The real admin: its URI SAN.
    let admin = ca.https(Some(&Subject {
        cn: Some("admin-workload"),
        uris: &[ADMIN],
        ..Subject::default()
    }));
    assert_eq!(echo(&admin, &base, &[]).await, 200);
    // The attack of the issue: CN=spiffe://.../admin and no URI SAN, in any case.
    for cn in [
        ADMIN,
        "SPIFFE://example.org/ns/prod/sa/admin",
        " spiffe://example.org/ns/prod/sa/admin",
    ] {
        let forged = ca.https(Some(&Subject {
            cn: Some(cn),
            ..Subject::default()
        }));
        assert_eq!(cert_call(&forged, &base).await, CERT_REFUSED, "{cn:?}");
    }
    // A DNS SAN spelled as a SPIFFE ID is no SPIFFE ID either.
    let dns = ca.https(Some(&Subject {
        cn: Some("x"),
        dns: &["spiffe.example.org"],
        ..Subject::default()
    }));
    assert_eq!(cert_call(&dns, &base).await, POLICY_REFUSED);
    // The audit trail never shows the forged certificates as the admin's SPIFFE ID.
    let db = dir.path().join("a.db");
    assert!(eventually(|| request_rows(&db).len() >= 5).await);
    let admins = users(&db)
        .iter()
        .filter(|u| u.contains("spiffe://example.org/ns/prod/sa/admin"))
        .count();
    assert_eq!(admins, 1, "{:?}", users(&db));
    assert!(
        users(&db).contains(&format!("mtls:{ADMIN}")),
        "{:?}",
        users(&db)
    );

    // With `identity: spiffe_id`, a certificate without a URI SAN has no identity.
    let dir2 = tempdir();
    let (_up2, _gw2, base2) = spiffe_gateway(dir2.path(), &ca, "spiffe_id", "");
    let forged = ca.https(Some(&Subject {
        cn: Some(ADMIN),
        ..Subject::default()
    }));
    assert_eq!(cert_call(&forged, &base2).await, CERT_REFUSED);
    assert_eq!(echo(&admin, &base2, &[]).await, 200);
}

#[tokio::test]
async fn certificate_with_two_spiffe_ids_or_a_malformed_one_is_refused() {
    let dir = tempdir();
    let ca = Ca::new("test CA");
    let (_up, _gw, base) = spiffe_gateway(dir.path(), &ca, "spiffe_id_or_common_name", "");
    let two: [&[&str]; 4] = [
        // The issue's case: the first one used to win.
        &[ADMIN, "spiffe://example.org/ns/prod/sa/intern"],
        &["spiffe://example.org/ns/prod/sa/intern", ADMIN],
        // The scheme is case-insensitive: still two SPIFFE IDs.
        &["SPIFFE://example.org/ns/prod/sa/intern", ADMIN],
        &[ADMIN, ADMIN],
    ];
    for uris in two {
        let c = ca.https(Some(&Subject {
            cn: Some("admin"),
            uris,
            ..Subject::default()
        }));
        assert_eq!(cert_call(&c, &base).await, CERT_REFUSED, "{uris:?}");
    }
    // Not SPIFFE IDs by the X.509-SVID rules: refused rather than read as the admin.
    for bad in [
        "spiffe://EXAMPLE.org/ns/prod/sa/admin",
        "spiffe://example.org/ns/prod/sa/admin/",
        "spiffe://example.org/ns/prod/../prod/sa/admin",
        "spiffe://example.org/ns/prod/sa/admin?x=1",
        "spiffe://example.org/ns/prod/sa/admin#x",
        "spiffe://user@example.org/ns/prod/sa/admin",
        "spiffe://example.org:443/ns/prod/sa/admin",
        "spiffe://example.org//ns/prod/sa/admin",
        "spiffe:///ns/prod/sa/admin",
    ] {
        let c = ca.https(Some(&Subject {
            cn: Some("admin"),
            uris: &[bad],
            ..Subject::default()
        }));
        assert_eq!(cert_call(&c, &base).await, CERT_REFUSED, "{bad}");
    }
    // One SPIFFE ID written with an upper-case scheme is that SPIFFE ID; another URI
    // beside it is not counted.
    let c = ca.https(Some(&Subject {
        cn: Some("x"),
        uris: &[
            "SPIFFE://example.org/ns/prod/sa/admin",
            "https://example.org/other",
        ],
        ..Subject::default()
    }));
    assert_eq!(echo(&c, &base, &[]).await, 200);
}

#[tokio::test]
async fn allow_list_applies_to_the_identity_that_becomes_the_principal() {
    let ca = Ca::new("test CA");
    // The issue's case: the allowed DNS SAN beside CN=admin made the caller `admin`.
    let dir = tempdir();
    let allow = "    allowSans: [\"svc.example.com\"]\n";
    let (_up, _gw, base) = spiffe_gateway(dir.path(), &ca, "spiffe_id_or_common_name", allow);
    let attack = ca.https(Some(&Subject {
        cn: Some("admin"),
        dns: &["svc.example.com"],
        ..Subject::default()
    }));
    assert_eq!(cert_call(&attack, &base).await, CERT_REFUSED);
    // Same with common_name identity.
    let dir2 = tempdir();
    let (_up2, _gw2, base2) = spiffe_gateway(dir2.path(), &ca, "common_name", allow);
    assert_eq!(cert_call(&attack, &base2).await, CERT_REFUSED);
    // An allowed SPIFFE ID beside a CN: the SPIFFE ID is the principal and is allowed.
    let dir3 = tempdir();
    let allow3 = format!("    allowSans: [\"{ADMIN}\"]\n");
    let (_up3, _gw3, base3) = spiffe_gateway(dir3.path(), &ca, "spiffe_id_or_common_name", &allow3);
    let ok = ca.https(Some(&Subject {
        cn: Some("whatever"),
        uris: &[ADMIN],
        ..Subject::default()
    }));
    assert_eq!(echo(&ok, &base3, &[]).await, 200);
    // CN=<the allowed SPIFFE ID> with another URI SAN is not the allowed identity.
    let cn_only = ca.https(Some(&Subject {
        cn: Some(ADMIN),
        uris: &["https://example.org/x"],
        ..Subject::default()
    }));
    assert_eq!(cert_call(&cn_only, &base3).await, CERT_REFUSED);
    // dns_name identity: the first DNS name is checked, not any of them.
    let dir4 = tempdir();
    let (_up4, _gw4, base4) = spiffe_gateway(dir4.path(), &ca, "dns_name", allow);
    let first = ca.https(Some(&Subject {
        cn: Some("admin"),
        dns: &["svc.example.com", "admin"],
        ..Subject::default()
    }));
    assert_eq!(echo(&first, &base4, &[]).await, 200);
    let second = ca.https(Some(&Subject {
        cn: Some("x"),
        dns: &["admin", "svc.example.com"],
        ..Subject::default()
    }));
    assert_eq!(cert_call(&second, &base4).await, CERT_REFUSED);
}

#[tokio::test]
async fn certificate_common_name_cannot_use_the_api_keys_policy_or_limits() {
    let dir = tempdir();
    let ca = Ca::new("test CA");
    let (_up, upstream) = start_upstream(dir.path());
    let auth = format!(
        "  enabled: true\n  mode: [mtls, apikey]\n  mtls:\n    identity: spiffe_id_or_common_name\n    defaultScopes: [\"mcp:tools\"]\n  apiKeys:\n    - {{id: ops, key: \"{KEY}\", scopes: [\"mcp:tools\"]}}\n"
    );
    let extra = r#"policy:
  allow:
    - {name: ops-tools, principals: ["apikey:ops"], tools: ["echo"]}
ratelimit:
  enabled: true
  requests_per_second: 1000
  burst: 1000
  client_limits:
    principals:
      "apikey:ops": {requests_per_second: 0.001, burst: 3}
"#;
    let yaml = tls_config(
        dir.path(),
        &ca,
        "VerifyClientCertIfGiven",
        &upstream,
        &auth,
        extra,
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let base = base.replace("127.0.0.1", "localhost");
    let cn_ops = ca.https(Some(&Subject {
        cn: Some("ops"),
        ..Subject::default()
    }));
    let no_cert = ca.https(None);
    // The certificate CN=ops is not the API key ops: the policy written for the key
    // refuses it, however often it tries (and its refusals do not spend ops' bucket).
    for _ in 0..4 {
        assert_eq!(cert_call(&cn_ops, &base).await, POLICY_REFUSED);
    }
    // The key's own limit (3) applies to the key, and only to it.
    for i in 0..3 {
        assert_eq!(
            echo(&no_cert, &base, &[("x-api-key", KEY)]).await,
            200,
            "call {i}"
        );
    }
    assert_eq!(echo(&no_cert, &base, &[("x-api-key", KEY)]).await, 429);
    assert_eq!(
        cert_call(&cn_ops, &base).await,
        POLICY_REFUSED,
        "not 429: its own bucket"
    );
    let db = dir.path().join("a.db");
    assert!(eventually(|| users(&db).len() >= 9).await);
    let u = users(&db);
    assert!(
        u.iter().all(|u| u == "apikey:ops" || u == "mtls:ops"),
        "{u:?}"
    );
    assert_eq!(u.iter().filter(|u| *u == "apikey:ops").count(), 4, "{u:?}");
}

#[tokio::test]
async fn basic_user_and_api_key_with_the_same_id_are_different_principals() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let yaml = format!(
        r#"server:
  addr: "127.0.0.1:0"
auth:
  enabled: true
  mode: [apikey, basic]
  apiKeys:
    - {{id: ops, key: "{KEY}", scopes: ["mcp:tools", "audit:read"]}}
  users:
    - {{username: ops, password: "correct horse battery staple", scopes: ["mcp:tools"]}}
    - {{username: "x#y", password: "correct horse battery staple", scopes: ["mcp:tools"]}}
policy:
  allow:
    - {{name: ops-tools, principals: ["apikey:ops"], tools: ["echo"]}}
    - {{name: basic-x, principals: ["basic:x#y"], tools: ["echo"]}}
ratelimit:
  enabled: true
  requests_per_second: 0.001
  burst: 3
ip_ratelimit:
  requests_per_second: 1000
  burst: 1000
audit:
  enabled: true
  database:
    sqlitePath: "{}"
upstreams:
  - name: demo
    path: /mcp
    url: "{upstream}"
"#,
        db.display()
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    use base64::Engine;
    let basic = |u: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{u}:correct horse battery staple"))
        )
    };
    let c = client();
    // Basic `ops` is refused by the rule for the key `ops`, and spends its own bucket.
    for _ in 0..3 {
        assert_eq!(
            echo(&c, &base, &[("authorization", &basic("ops"))]).await,
            403
        );
    }
    assert_eq!(
        echo(&c, &base, &[("authorization", &basic("ops"))]).await,
        429
    );
    assert_eq!(echo(&c, &base, &[("x-api-key", KEY)]).await, 200);
    // A user name holding the issuer separator is just a name.
    assert_eq!(
        echo(&c, &base, &[("authorization", &basic("x#y"))]).await,
        200
    );
    assert!(eventually(|| users(&db).len() >= 6).await);
    let u = users(&db);
    assert!(u.contains(&"apikey:ops".to_owned()), "{u:?}");
    assert!(u.contains(&"basic:ops".to_owned()), "{u:?}");
    assert!(u.contains(&"basic:x#y".to_owned()), "{u:?}");
    // The query API's user filter takes the qualified id; a bare one is refused.
    let q = |qs: &str| {
        let c = c.clone();
        let url = format!("{base}/api/audit/query?{qs}");
        async move {
            let r = c.get(url).header("x-api-key", KEY).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, body) = q("user=basic:ops").await;
    assert_eq!(s, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["count"].as_u64().unwrap() >= 4, "{v}");
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["event"]["user"] == "basic:ops"),
        "{v}"
    );
    let (s, body) = q("user=ops").await;
    assert_eq!(s, 400, "{body}");
}

fn hs256(secret: &str, claims: serde_json::Value) -> String {
    // With both JWT backends compiled in (--all-features), jsonwebtoken has no default.
    mcp_auth::jwt::install_crypto_provider();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn jwt_subjects_of_two_issuers_are_different_principals() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let (sa, sb) = (
        "issuer-a-secret-of-at-least-32-bytes-0123",
        "issuer-b-secret-of-at-least-32-bytes-4567",
    );
    let yaml = format!(
        r#"server:
  addr: "127.0.0.1:0"
auth:
  enabled: true
  mode: jwt
  jwt:
    issuers:
      - {{issuer: "https://a.example", secret: "{sa}"}}
      - {{issuer: "https://b.example", secret: "{sb}"}}
      - {{issuer: "https://a.example#alice", secret: "{sb}"}}
policy:
  allow:
    - {{name: a-alice, principals: ["jwt:https://a.example#alice"], tools: ["echo"]}}
audit:
  enabled: true
  database:
    sqlitePath: "{}"
upstreams:
  - name: demo
    path: /mcp
    url: "{upstream}"
"#,
        db.display()
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = |secret: &str, iss: &str, sub: &str| {
        format!(
            "Bearer {}",
            hs256(secret, json!({"iss": iss, "sub": sub, "exp": exp}))
        )
    };
    let c = client();
    let auth = |t: String| {
        let (c, base) = (c.clone(), base.clone());
        async move { echo(&c, &base, &[("authorization", &t)]).await }
    };
    assert_eq!(auth(token(sa, "https://a.example", "alice")).await, 200);
    // The same `sub` from issuer B is not A's alice.
    assert_eq!(auth(token(sb, "https://b.example", "alice")).await, 403);
    // An issuer whose name holds the separator cannot forge A's alice with `sub` x.
    assert_eq!(auth(token(sb, "https://a.example#alice", "x")).await, 403);
    assert_eq!(
        auth(token(sb, "https://a.example", "alice")).await,
        401,
        "B's key is not A's"
    );
    assert!(eventually(|| users(&db).len() >= 3).await);
    let u = users(&db);
    assert!(
        u.contains(&"jwt:https://a.example#alice".to_owned()),
        "{u:?}"
    );
    assert!(
        u.contains(&"jwt:https://b.example#alice".to_owned()),
        "{u:?}"
    );
    assert!(!u.iter().any(|x| x == "alice"), "{u:?}");
    assert_eq!(
        u.iter()
            .filter(|x| *x == "jwt:https://a.example#alice")
            .count(),
        1,
        "{u:?}"
    );
}

#[tokio::test]
async fn ambiguous_bare_principals_are_configuration_errors() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let cfg = |mode: &str, principal: &str, limits: &str| {
        format!(
            r#"server:
  addr: "127.0.0.1:0"
auth:
  enabled: true
  mode: {mode}
  apiKeys:
    - {{id: ops, key: "{KEY}", scopes: ["mcp:tools"]}}
  users:
    - {{username: ops, password: "correct horse battery staple"}}
    - {{username: carol, password: "correct horse battery staple"}}
  jwtSecret: "a-jwt-secret-of-at-least-32-bytes-0123456789"
policy:
  allow:
    - name: ops-tools
      principals: [{principal}]
      tools: ["echo"]
ratelimit:
  enabled: true
  requests_per_second: 100
{limits}audit:
  enabled: true
  database:
    sqlitePath: "{}"
upstreams:
  - name: demo
    path: /mcp
    url: "{upstream}"
"#,
            db.display()
        )
    };
    // `ops` is both an API key and a Basic user: which one the rule means is not said.
    let y = cfg("[apikey, basic]", "ops", "");
    assert_check_refuses(
        dir.path(),
        &y,
        "principals: [ops]",
        "policy.allow[0].principals[0]",
    );
    let (_, _, err) = run(
        &[
            "check",
            "--config",
            dir.path().join("bad.yaml").to_str().unwrap(),
        ],
        dir.path(),
        &[],
    );
    assert!(err.contains("apikey:ops") && err.contains("*:ops"), "{err}");
    // A JWT `sub` or a certificate could be called anything: with jwt beside apikey, a
    // bare id is ambiguous even if only an API key has it.
    let y = cfg("[apikey, jwt]", "ops", "");
    assert_check_refuses(
        dir.path(),
        &y,
        "principals: [ops]",
        "policy.allow[0].principals[0]",
    );
    // A bare id no configured method can produce.
    let y = cfg("apikey", "nobody", "");
    assert_check_refuses(
        dir.path(),
        &y,
        "principals: [nobody]",
        "policy.allow[0].principals[0]",
    );
    // A qualified id naming a method that is not configured.
    let y = cfg("apikey", "\"basic:ops\"", "");
    assert_check_refuses(
        dir.path(),
        &y,
        "principals: [\"basic:ops\"]",
        "policy.allow[0].principals[0]",
    );
    // The rate limits' per-principal keys follow the same rules.
    let limits = "  client_limits:\n    principals:\n      ops: {requests_per_second: 1}\n";
    let y = cfg("[apikey, basic]", "\"apikey:ops\"", limits);
    assert_check_refuses(
        dir.path(),
        &y,
        "ops: {requests_per_second: 1}",
        "ratelimit.client_limits.principals.ops",
    );
    // Unambiguous: bare `carol` is only a Basic user; qualified entries; an explicit
    // any-source entry, accepted with a warning.
    for (mode, p) in [
        ("[apikey, basic]", "carol"),
        ("[apikey, basic]", "\"apikey:ops\""),
        ("[apikey, basic, jwt]", "\"jwt:#ops\""),
        ("[apikey, basic]", "\"*:ops\""),
    ] {
        let path = dir.path().join("good.yaml");
        std::fs::write(&path, cfg(mode, p, "")).unwrap();
        let (code, _, err) = run(
            &["check", "--config", path.to_str().unwrap()],
            dir.path(),
            &[],
        );
        assert_eq!(code, 0, "{mode} {p}: {err}");
        if p.contains('*') {
            assert!(err.contains("any") && err.contains("*:ops"), "{err}");
        }
    }
}

#[tokio::test]
async fn single_mode_bare_principals_keep_working_and_audit_shows_qualified_ids() {
    let dir = tempdir();
    let (_up, upstream) = start_upstream(dir.path());
    let db = dir.path().join("a.db");
    let extra = r#"policy:
  allow:
    - {name: alice-tools, principals: ["alice"], tools: ["echo"]}
"#;
    let yaml = base_config(&upstream, &db, extra).replace(
        "  burst: 1000\n",
        "  burst: 1000\n  client_limits:\n    principals:\n      bob: {requests_per_second: 0.001, burst: 1}\n",
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let c = client();
    assert_eq!(echo(&c, &base, &[("x-api-key", KEY)]).await, 200);
    // bob: no rule; and his own limit (1) is his.
    assert_eq!(echo(&c, &base, &[("x-api-key", KEY2)]).await, 403);
    assert_eq!(echo(&c, &base, &[("x-api-key", KEY2)]).await, 429);
    assert_eq!(echo(&c, &base, &[("x-api-key", KEY)]).await, 200);
    assert!(eventually(|| users(&db).len() >= 4).await);
    let u = users(&db);
    assert!(
        u.iter().all(|x| x == "apikey:alice" || x == "apikey:bob"),
        "{u:?}"
    );
    let v = audit_query(&base, "user=apikey%3Aalice").await;
    assert_eq!(v["count"], 2, "{v}");
}
