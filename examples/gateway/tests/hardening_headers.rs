//! Credentials and identity headers at the upstream boundary, end to end over real
//! sockets: every credential header (the defaults and the configured API key header, in
//! any case) is read by authentication only, never forwarded, masked in the audit trail
//! and absent from trace-level logs; identity, client-address, routing and override
//! headers a client sends never reach the upstream, which gets the verified principal
//! from the gateway instead; credentials in the query string are refused whatever their
//! form.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;

/// [`base_config`] with `auth.apiKeyHeader` set to `header` (written as is).
fn config_with_key_header(
    upstream: &str,
    db: &std::path::Path,
    header: &str,
    extra: &str,
) -> String {
    base_config(upstream, db, extra).replacen(
        "  mode: apikey\n",
        &format!("  mode: apikey\n  apiKeyHeader: {header}\n"),
        1,
    )
}

/// The secrets sent in the default credential headers, one per header.
const DEFAULT_CREDENTIALS: &[(&str, &str)] = &[
    ("Authorization", "Bearer secret-authorization-7f3a9c"),
    (
        "Proxy-Authorization",
        "Basic c2VjcmV0LXByb3h5LWF1dGgtN2YzYQ==",
    ),
    ("Cookie", "session=secret-cookie-7f3a9c"),
    ("X-API-Key", "secret-x-api-key-7f3a9c"),
    ("X-Auth-Token", "secret-x-auth-token-7f3a9c"),
];

#[tokio::test]
async fn every_credential_header_is_read_stripped_masked_and_kept_out_of_logs() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    // The review's case: the key travels in a custom header.
    let yaml = per_request_audit(&config_with_key_header(&upstream, &db, "X-MCP-Key", ""));
    let (gw, base) = start_gateway_env(dir.path(), &yaml, &[("MCP_GATEWAY_LOG", "trace")]);
    let c = client();
    let url = format!("{base}/mcp");
    // Authentication reads the configured header in any case, and nothing else.
    for spelling in ["X-MCP-Key", "x-mcp-key", "X-Mcp-KEY"] {
        let mut req = call_tool(&c, &url, "echo", json!({"message": "hi"})).header(spelling, KEY);
        for (name, value) in DEFAULT_CREDENTIALS {
            req = req.header(*name, *value);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{spelling}: {}", r.text().await.unwrap());
    }
    // A refused key (an auth failure row) and a key sent in the default header only.
    let r = call_tool(&c, &url, "echo", json!({"message": "hi"}))
        .header("X-MCP-Key", "Wrong123!@#Key456!@#Nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = call_tool(&c, &url, "echo", json!({"message": "hi"}))
        .header("X-API-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the default header is not the configured one"
    );

    let secrets: Vec<&str> = std::iter::once(KEY)
        .chain(std::iter::once("Wrong123!@#Key456!@#Nope"))
        .chain(DEFAULT_CREDENTIALS.iter().map(|(_, v)| *v))
        .chain(["secret-authorization-7f3a9c", "secret-cookie-7f3a9c"])
        .collect();
    // 1. Never forwarded.
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    for (_, h) in &got {
        let all = dump_headers(h);
        assert!(
            !h.contains_key("x-mcp-key"),
            "x-mcp-key reached the upstream:\n{all}"
        );
        for (name, _) in DEFAULT_CREDENTIALS {
            assert!(
                !h.contains_key(*name),
                "{name} reached the upstream:\n{all}"
            );
        }
        for s in &secrets {
            assert!(!all.contains(s), "{s} reached the upstream:\n{all}");
        }
    }
    // 2. Masked in every audit row (present, as the mask).
    assert!(eventually(|| request_rows(&db).len() >= 5).await);
    let rows = request_rows(&db);
    for row in &rows {
        let text = row.event.to_string();
        for s in &secrets {
            assert!(!text.contains(s), "{s} is in an audit row: {text}");
        }
    }
    let first = &rows[0].event["headers"];
    for name in [
        "x-mcp-key",
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "x-auth-token",
    ] {
        let v = first[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} not recorded: {first}"));
        assert!(v.contains("REDACTED"), "{name}: {v}");
    }
    // Also through the query API (what an audit:read holder sees).
    let q = audit_query(&base, "limit=100").await.to_string();
    for s in &secrets {
        assert!(!q.contains(s), "{s} is in the audit query answer");
    }
    // 3. Not in the logs, at trace level.
    gw.terminate();
    let mut gw = gw;
    gw.wait_exit(30);
    let log = gw.stderr_text();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG") || log.len() > 1000,
        "trace logs were written:\n{log}"
    );
    for s in &secrets {
        assert!(!log.contains(s), "{s} is in the trace-level logs");
    }
}

#[test]
fn header_names_in_configuration_are_validated_not_trimmed() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let upstream = "http://127.0.0.1:9/mcp";
    for bad in [
        r#"" X-MCP-Key ""#,
        r#""X-MCP-Key ""#,
        r#""X-MCP Key""#,
        r#""""#,
        r#""X-MCP-Key:""#,
    ] {
        let yaml = config_with_key_header(upstream, &db, bad, "");
        assert_check_refuses(
            dir.path(),
            &yaml,
            &format!("apiKeyHeader: {bad}"),
            "auth.apiKeyHeader",
        );
        // And the gateway refuses to start with it.
        let path = dir.path().join("bad.yaml");
        let (code, _, err) = run(&["--config", path.to_str().unwrap()], dir.path(), &[]);
        assert_ne!(code, 0, "started with apiKeyHeader {bad}");
        assert!(err.contains("auth.apiKeyHeader"), "{err}");
    }
    for (extra, line, key) in [
        (
            "security:\n  upstreamHeaders:\n    strip: [\"X Bad\"]\n",
            "strip: [\"X Bad\"]",
            "security.upstreamHeaders.strip",
        ),
        (
            "security:\n  upstreamHeaders:\n    allow: [Authorization]\n",
            "allow: [Authorization]",
            "security.upstreamHeaders.allow",
        ),
        (
            "security:\n  upstreamHeaders:\n    allow: [X-MCP-Key]\n",
            "allow: [X-MCP-Key]",
            "security.upstreamHeaders.allow",
        ),
        (
            "security:\n  upstreamHeaders:\n    principalHeader: Authorization\n",
            "principalHeader: Authorization",
            "security.upstreamHeaders.principalHeader",
        ),
        (
            "security:\n  upstreamHeaders:\n    clientCertHeader: \" X-Client-Cert\"\n",
            "clientCertHeader: \" X-Client-Cert\"",
            "security.upstreamHeaders.clientCertHeader",
        ),
        (
            "security:\n  upstreamHeaders:\n    principalHeader: \"X Principal\"\n",
            "principalHeader: \"X Principal\"",
            "security.upstreamHeaders.principalHeader",
        ),
    ] {
        let yaml = config_with_key_header(upstream, &db, "X-MCP-Key", extra);
        assert_check_refuses(dir.path(), &yaml, line, key);
    }
    let yaml = config_with_key_header(
        upstream,
        &db,
        "X-MCP-Key\n  credentialHeaders: [\"X-Token \"]",
        "",
    );
    assert_check_refuses(
        dir.path(),
        &yaml,
        "credentialHeaders: [\"X-Token \"]",
        "auth.credentialHeaders",
    );
}

/// Identity, client-certificate, client-address, routing and method-override headers a
/// client may send, as exact names and under the default prefixes, in odd cases.
const SPOOFED: &[&str] = &[
    "X-Forwarded-User",
    "x-forwarded-email",
    "X-FORWARDED-GROUPS",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Remote-User",
    "X-Remote-Group",
    "X-Remote-Extra-Org",
    "Remote-User",
    "X-Auth-Request-User",
    "x-auth-request-email",
    "X-Auth-Request-Access-Token",
    "X-User",
    "X-User-Id",
    "X-Email",
    "X-Authenticated-User",
    "X-Consumer-Username",
    "X-Goog-Authenticated-User-Email",
    "X-MS-Client-Principal-Name",
    "X-Amzn-Oidc-Identity",
    "X-WebAuth-User",
    "X-Forwarded-Client-Cert",
    "X-Client-Cert",
    "X-SSL-Client-S-DN",
    "x-ssl-client-verify",
    "X-SSL-Cert",
    "SSL-Client-Cert",
    "X-ARR-ClientCert",
    "X-Real-IP",
    "True-Client-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
    "X-Originating-IP",
    "X-Envoy-External-Address",
    "Forwarded",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Server",
    "X-Forwarded-Uri",
    "X-Original-URL",
    "X-Original-URI",
    "X-Rewrite-URL",
    "X-Original-Host",
    "Via",
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-MCP-Principal",
];

#[tokio::test]
async fn client_identity_address_and_routing_headers_never_reach_the_upstream() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, ""));
    let c = client();
    let mut req = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "hi"}))
        .header("x-api-key", KEY)
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-app-trace", "kept-7f3a");
    for name in SPOOFED {
        req = req.header(*name, "admin");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, h) = seen.lock().unwrap().pop().unwrap();
    let all = dump_headers(&h);
    for name in SPOOFED
        .iter()
        .filter(|n| !n.eq_ignore_ascii_case("x-mcp-principal"))
    {
        assert!(
            !h.contains_key(*name),
            "{name} reached the upstream:\n{all}"
        );
    }
    // The gateway's own word: the verified principal and the client address it saw.
    assert_eq!(h["x-mcp-principal"], "apikey:alice", "{all}");
    assert_eq!(h.get_all("x-mcp-principal").iter().count(), 1, "{all}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{all}");
    assert!(
        !all.contains("admin"),
        "a spoofed value reached the upstream:\n{all}"
    );
    // Other headers pass.
    assert_eq!(h["x-app-trace"], "kept-7f3a");
}

#[tokio::test]
async fn the_strip_list_and_the_principal_header_are_configurable() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let extra = "security:\n  upstreamHeaders:\n    strip: [X-Tenant, \"X-Internal-*\"]\n    allow: [Via]\n    principalHeader: X-Verified-User\n";
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, extra));
    let c = client();
    let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "hi"}))
        .header("x-api-key", KEY2)
        .header("X-Tenant", "other")
        .header("X-Internal-Role", "admin")
        .header("x-internal-", "admin")
        .header("X-Verified-User", "admin")
        .header("X-Remote-User", "admin")
        .header("Via", "1.1 client-proxy")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, h) = seen.lock().unwrap().pop().unwrap();
    let all = dump_headers(&h);
    for gone in [
        "x-tenant",
        "x-internal-role",
        "x-internal-",
        "x-remote-user",
        "x-mcp-principal",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream:\n{all}");
    }
    assert_eq!(h["x-verified-user"], "apikey:bob", "{all}");
    assert_eq!(h["via"], "1.1 client-proxy", "{all}");

    // Turned off: no principal header, and a client's copy is still stripped.
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let extra = "security:\n  upstreamHeaders:\n    principalHeader: \"\"\n";
    let (_gw, base) = start_gateway(dir.path(), &base_config(&upstream, &db, extra));
    let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "hi"}))
        .header("x-api-key", KEY2)
        .header("X-MCP-Principal", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, h) = seen.lock().unwrap().pop().unwrap();
    assert!(!h.contains_key("x-mcp-principal"), "{}", dump_headers(&h));
}

#[tokio::test]
async fn credentials_in_the_query_string_are_refused_whatever_their_form() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    let (upstream, seen) = recording_upstream().await;
    let yaml = config_with_key_header(&upstream, &db, "X-MCP-Key", "");
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let c = client();
    let many: String = (0..300).map(|i| format!("p{i}=v&")).collect();
    let many_semi: String = (0..300).map(|i| format!("p{i}=v;")).collect();
    let queries = [
        "access_token=x".to_owned(),
        "a=1;access_token=x".to_owned(),
        "a=1;api_key=x;b=2".to_owned(),
        format!("{many}access_token=x"),
        format!("{many_semi}api_key=x"),
        format!("{many}a=1;token=x"),
        "access%5Ftoken=x".to_owned(),
        "access%5ftoken=x".to_owned(),
        "%61ccess_token=x".to_owned(),
        "ACCESS_TOKEN=x".to_owned(),
        "Api_Key=x".to_owned(),
        "access_token=".to_owned(),
        "access_token".to_owned(),
        "a=1&access_token=&access_token=y".to_owned(),
        "access_token+=x".to_owned(),
        "+access_token=x".to_owned(),
        "access_token%20=x".to_owned(),
        "api_key[]=x".to_owned(),
        "access%255Ftoken=x".to_owned(),
        // The configured API key header, as a parameter.
        "x-mcp-key=x".to_owned(),
        "X-MCP-KEY=x".to_owned(),
    ];
    for q in &queries {
        let r = call_tool(
            &c,
            &format!("{base}/mcp?{q}"),
            "echo",
            json!({"message": "hi"}),
        )
        .header("X-MCP-Key", KEY)
        .send()
        .await
        .unwrap();
        let short: String = q
            .chars()
            .rev()
            .take(40)
            .collect::<String>()
            .chars()
            .rev()
            .collect();
        assert_eq!(r.status(), 400, "...{short} was not refused");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a refused request reached the upstream"
    );
    // Ordinary parameters pass, with either separator.
    for q in ["a=1;b=2", "a=1&b=2", "tokens=3", "my_access_token_count=1"] {
        let r = call_tool(
            &c,
            &format!("{base}/mcp?{q}"),
            "echo",
            json!({"message": "hi"}),
        )
        .header("X-MCP-Key", KEY)
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 200, "{q}");
    }
}

/// A test CA issuing a server certificate for localhost and client certificates with a
/// SPIFFE URI.
struct Ca(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl Ca {
    fn new(name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Self(rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap())
    }
    fn pem_text(&self) -> String {
        self.0.pem()
    }
    fn issue(&self, cn: &str, server: bool) -> (String, String) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, SanType};
        let key = rcgen::KeyPair::generate().unwrap();
        let names = if server {
            vec!["localhost".to_string()]
        } else {
            Vec::new()
        };
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        if server {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            p.subject_alt_names.push(SanType::URI(
                format!("spiffe://example.org/sa/{cn}").try_into().unwrap(),
            ));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn mtls_client(ca_pem: &str, cert: &str, key: &str) -> reqwest::Client {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    ring();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap(),
        PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
    )
    .unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()
        .unwrap()
}

#[tokio::test]
async fn under_mutual_tls_the_upstream_gets_the_gateways_xfcc_not_the_clients() {
    let dir = tempdir();
    let (upstream, seen) = recording_upstream().await;
    let ca = Ca::new("test CA");
    let (cert, key) = ca.issue("localhost", true);
    let write = |name: &str, s: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, s).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let yaml = format!(
        r#"server:
  addr: "127.0.0.1:0"
  tls:
    certFile: "{}"
    keyFile: "{}"
    clientAuth: RequireAndVerifyClientCert
    caFile: "{}"
auth:
  enabled: true
  mode: mtls
  mtls:
    identity: spiffe_id_or_common_name
    defaultScopes: ["mcp:tools"]
upstreams:
  - name: demo
    path: /mcp
    url: "{upstream}"
"#,
        write("server.pem", &cert),
        write("server.key", &key),
        write("ca.pem", &ca.pem_text()),
    );
    let (_gw, base) = start_gateway(dir.path(), &yaml);
    let base = base.replace("127.0.0.1", "localhost");
    let (ccert, ckey) = ca.issue("agent-1", false);
    let c = mtls_client(&ca.pem_text(), &ccert, &ckey);
    let r = call_tool(&c, &format!("{base}/mcp"), "echo", json!({"message": "hi"}))
        .header(
            "X-Forwarded-Client-Cert",
            "Hash=00;URI=spiffe://example.org/sa/admin",
        )
        .header("X-SSL-Client-S-DN", "CN=admin")
        .header("X-MCP-Principal", "spiffe://example.org/sa/admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, h) = seen.lock().unwrap().pop().unwrap();
    let all = dump_headers(&h);
    assert!(
        !all.contains("sa/admin") && !all.contains("CN=admin"),
        "{all}"
    );
    assert_eq!(
        h.get_all("x-forwarded-client-cert").iter().count(),
        1,
        "{all}"
    );
    let xfcc = h["x-forwarded-client-cert"].to_str().unwrap();
    assert!(xfcc.starts_with("Hash="), "{xfcc}");
    assert!(xfcc.contains(";Subject="), "{xfcc}");
    assert!(
        xfcc.ends_with(";URI=spiffe://example.org/sa/agent-1"),
        "{xfcc}"
    );
    assert_eq!(
        h["x-mcp-principal"], "mtls:spiffe://example.org/sa/agent-1",
        "{all}"
    );
}
