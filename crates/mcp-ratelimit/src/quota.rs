//! Quotas, decisions and the rate limit headers.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{HeaderStyle, HeadersConfig};

/// `RateLimit` (current draft, combined form).
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy` (current draft, combined form).
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit-Limit` (earlier drafts).
pub(crate) const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining` (earlier drafts).
pub(crate) const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset` (earlier drafts).
pub(crate) const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// `X-RateLimit-Limit` (legacy).
pub(crate) const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining` (legacy).
pub(crate) const X_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset` (legacy).
pub(crate) const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// One GCRA quota: `burst` requests at once, then one every `period`.
#[derive(Debug, Clone)]
pub(crate) struct QuotaSpec {
    /// The policy name (header policy identifier, Denial detail): a safe token.
    pub(crate) policy: Arc<str>,
    pub(crate) burst: u32,
    /// The emission interval: one request every `period`.
    pub(crate) period: Duration,
    /// The precomputed `RateLimit-Policy` member.
    pub(crate) policy_value: HeaderValue,
    /// Appended to the client's Redis key for rule quotas (`:m:tools/call`, `:t:search`).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) redis_suffix: String,
}

/// Keeps only characters that are safe in a structured-field string, a metric label and a
/// Redis key: others become `_`.
pub(crate) fn sanitize_token(s: &str) -> String {
    s.chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl QuotaSpec {
    pub(crate) fn new(policy: String, rps: f64, burst: u32) -> Self {
        let policy = sanitize_token(&policy);
        let period = Duration::from_secs_f64(1.0 / rps).max(Duration::from_nanos(1));
        // Seconds to refill the whole burst, rounded up: the `w` of `RateLimit-Policy`.
        let window_secs = ceil_secs(period * burst).max(1);
        let policy_value = HeaderValue::try_from(format!("\"{policy}\";q={burst};w={window_secs}"))
            .unwrap_or_else(|_| HeaderValue::from_static("\"default\""));
        Self {
            policy: Arc::from(policy),
            burst: burst.max(1),
            period,
            policy_value,
            redis_suffix: String::new(),
        }
    }

    pub(crate) fn with_redis_suffix(mut self, suffix: String) -> Self {
        self.redis_suffix = suffix;
        self
    }

    /// The emission interval in microseconds (Redis backend), at least 1.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn interval_us(&self) -> u64 {
        (self.period.as_nanos() / 1000).max(1) as u64
    }
}

/// The outcome of charging a request to its quotas.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) allowed: bool,
    /// The quota reported in the headers: the one that refused, or the one with the
    /// fewest units left.
    pub(crate) quota: usize,
    pub(crate) remaining: u32,
    pub(crate) retry_after: Duration,
    /// Time until that quota is full again.
    pub(crate) reset: Duration,
    /// When the request costs more units than the quota's burst (so that no wait would
    /// ever let it through): that cost. 0 otherwise.
    pub(crate) exceeds: u32,
}

impl Verdict {
    pub(crate) fn allowed(quota: usize, remaining: u32, reset: Duration) -> Self {
        Self {
            allowed: true,
            quota,
            remaining,
            retry_after: Duration::ZERO,
            reset,
            exceeds: 0,
        }
    }

    pub(crate) fn limited(quota: usize, retry_after: Duration, reset: Duration) -> Self {
        Self {
            allowed: false,
            quota,
            remaining: 0,
            retry_after,
            reset,
            exceeds: 0,
        }
    }

    /// Refused for good: `cost` units exceed the quota's burst, which is all a full bucket
    /// ever holds (no `Retry-After`: waiting would not help).
    pub(crate) fn exceeds_burst(quota: usize, cost: u32) -> Self {
        Self {
            allowed: false,
            quota,
            remaining: 0,
            retry_after: Duration::ZERO,
            reset: Duration::ZERO,
            exceeds: cost,
        }
    }

    pub(crate) fn unlimited() -> Self {
        Self::allowed(0, u32::MAX, Duration::ZERO)
    }
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The `Retry-After` value: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

fn num(n: u64) -> HeaderValue {
    HeaderValue::from(n)
}

/// The rate limit headers for a decision, in the configured style.
pub(crate) fn rate_headers(cfg: &HeadersConfig, spec: &QuotaSpec, v: &Verdict) -> HeaderMap {
    let mut h = HeaderMap::new();
    let reset = ceil_secs(v.reset);
    let remaining = u64::from(v.remaining.min(spec.burst));
    match cfg.style {
        HeaderStyle::Split => {
            h.insert(RATELIMIT_LIMIT, num(u64::from(spec.burst)));
            h.insert(RATELIMIT_REMAINING, num(remaining));
            h.insert(RATELIMIT_RESET, num(reset));
        }
        HeaderStyle::Combined => {
            h.insert(RATELIMIT_POLICY, spec.policy_value.clone());
            if let Ok(v) =
                HeaderValue::try_from(format!("\"{}\";r={remaining};t={reset}", spec.policy))
            {
                h.insert(RATELIMIT, v);
            }
        }
        HeaderStyle::None => {}
    }
    if cfg.legacy {
        h.insert(X_RATELIMIT_LIMIT, num(u64::from(spec.burst)));
        h.insert(X_RATELIMIT_REMAINING, num(remaining));
        h.insert(X_RATELIMIT_RESET, num(reset));
    }
    h
}

/// Merges the headers of an allowed decision into a response: the combined-form fields are
/// lists, so a second limiter appends its policy; the single-valued ones are left to the
/// limiter that set them first (the inner one).
pub(crate) fn merge_headers(target: &mut HeaderMap, extra: HeaderMap) {
    let mut last: Option<HeaderName> = None;
    for (name, value) in extra {
        let name = match name {
            Some(n) => {
                last = Some(n.clone());
                n
            }
            None => match &last {
                Some(n) => n.clone(),
                None => continue,
            },
        };
        if name == RATELIMIT || name == RATELIMIT_POLICY {
            target.append(name, value);
        } else if !target.contains_key(&name) {
            target.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seconds_round_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }

    #[test]
    fn combined_form_syntax() {
        let spec = QuotaSpec::new("ip".into(), 100.0, 200);
        let v = Verdict::allowed(0, 57, Duration::from_millis(1430));
        let cfg = HeadersConfig {
            style: HeaderStyle::Combined,
            legacy: true,
            on_allowed: true,
        };
        let h = rate_headers(&cfg, &spec, &v);
        assert_eq!(h[RATELIMIT_POLICY], "\"ip\";q=200;w=2");
        assert_eq!(h[RATELIMIT], "\"ip\";r=57;t=2");
        assert_eq!(h[X_RATELIMIT_REMAINING], "57");
        assert!(!h.contains_key(RATELIMIT_LIMIT));
    }

    #[test]
    fn merge_appends_lists_and_keeps_inner_values() {
        let inner_spec = QuotaSpec::new("principal".into(), 10.0, 10);
        let outer_spec = QuotaSpec::new("ip".into(), 100.0, 100);
        for style in [HeaderStyle::Combined, HeaderStyle::Split] {
            let cfg = HeadersConfig {
                style,
                legacy: false,
                on_allowed: true,
            };
            let mut resp = rate_headers(
                &cfg,
                &inner_spec,
                &Verdict::allowed(0, 3, Duration::from_secs(1)),
            );
            merge_headers(
                &mut resp,
                rate_headers(
                    &cfg,
                    &outer_spec,
                    &Verdict::allowed(0, 90, Duration::from_secs(1)),
                ),
            );
            match style {
                HeaderStyle::Combined => assert_eq!(resp.get_all(RATELIMIT).iter().count(), 2),
                _ => assert_eq!(resp[RATELIMIT_REMAINING], "3"),
            }
        }
    }

    proptest! {
        #[test]
        fn policy_names_always_make_valid_headers(name in ".{0,120}", rps in 0.001f64..1e6, burst in 1u32..1_000_000) {
            let spec = QuotaSpec::new(name, rps, burst);
            prop_assert!(spec.policy.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\'));
            let cfg = HeadersConfig { style: HeaderStyle::Combined, legacy: true, on_allowed: true };
            let h = rate_headers(&cfg, &spec, &Verdict::limited(0, Duration::from_secs_f64(1.0 / rps), Duration::from_secs(5)));
            prop_assert!(h.contains_key(RATELIMIT));
            prop_assert!(!spec.policy_value.to_str().unwrap().ends_with(";w=0"));
        }
    }
}
