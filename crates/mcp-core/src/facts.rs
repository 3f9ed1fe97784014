//! What the layers learnt about a request, kept where an outer layer can still read it if
//! the request is abandoned before its response.
//!
//! The suite's layers publish what they establish (the [`Principal`], the parsed
//! [`McpRequest`]) in the request extensions for inner services and in the response
//! extensions for outer layers. When the client disconnects, or a timeout drops the
//! request's future, before a response exists, the outer layers never see the response
//! extensions: an audit record of a tool call abandoned mid-flight would say neither who
//! made it nor which tool it was, although the upstream may have run it.
//!
//! [`RequestFacts`] closes that gap. An outer layer (mcp-audit's `AuditLayer`) puts one in
//! the request extensions and keeps a clone; the suite's layers that establish a fact
//! record it there too ([`RequestFacts::note_principal`], [`RequestFacts::note_request`]);
//! the outer layer reads them if the response never comes. Without a `RequestFacts` in
//! the extensions the notes do nothing.
//!
//! ```
//! use http::Request;
//! use mcp_core::{AuthMethod, Principal, RequestFacts};
//!
//! let facts = RequestFacts::new();
//! let mut req = Request::new(());
//! req.extensions_mut().insert(facts.clone());
//!
//! // An inner layer authenticates the caller.
//! let p = Principal::new("alice", AuthMethod::ApiKey);
//! RequestFacts::note_principal(req.extensions(), &p);
//! drop(req); // abandoned before any response
//!
//! assert_eq!(facts.principal().unwrap().id(), "alice");
//! assert!(facts.request().is_none());
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use http::Extensions;

use crate::{McpRequest, Principal};

#[derive(Default)]
struct Facts {
    principal: Option<Principal>,
    request: Option<McpRequest>,
}

/// A shared record of the facts inner layers established about one request (see the
/// [module documentation](self)). Cheap to clone: clones share the record.
#[derive(Clone, Default)]
pub struct RequestFacts(Arc<Mutex<Facts>>);

impl fmt::Debug for RequestFacts {
    // The facts' own Debug output hides secrets; this one only says which are known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let facts = self.lock();
        f.debug_struct("RequestFacts")
            .field("principal", &facts.principal.is_some())
            .field("request", &facts.request.is_some())
            .finish()
    }
}

impl RequestFacts {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The record in `extensions`, shared with the layer that put it there, or a new one
    /// put there now. Outer layers that each need the facts (metrics, audit) share one.
    pub fn get_or_insert(extensions: &mut Extensions) -> Self {
        if let Some(facts) = extensions.get::<Self>() {
            return facts.clone();
        }
        let facts = Self::new();
        extensions.insert(facts.clone());
        facts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Facts> {
        // The critical sections only move `Arc`s: a poisoned lock still holds valid data.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the caller, if the extensions carry a `RequestFacts`.
    pub fn note_principal(extensions: &Extensions, principal: &Principal) {
        if let Some(facts) = extensions.get::<Self>() {
            facts.lock().principal = Some(principal.clone());
        }
    }

    /// Records the parsed request (a later note, such as a sanitizer's rewrite, replaces
    /// an earlier one), if the extensions carry a `RequestFacts`.
    pub fn note_request(extensions: &Extensions, request: &McpRequest) {
        if let Some(facts) = extensions.get::<Self>() {
            facts.lock().request = Some(request.clone());
        }
    }

    /// The caller, if an inner layer established it.
    pub fn principal(&self) -> Option<Principal> {
        self.lock().principal.clone()
    }

    /// The parsed request, if an inner layer parsed it.
    pub fn request(&self) -> Option<McpRequest> {
        self.lock().request.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{AuthMethod, McpHeaders};
    use bytes::Bytes;

    fn parsed(tool: &str) -> McpRequest {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}"}}}}"#
        );
        McpRequest::parse(Bytes::from(body), McpHeaders::default()).unwrap()
    }

    #[test]
    fn notes_without_a_record_do_nothing() {
        let ext = Extensions::new();
        RequestFacts::note_principal(&ext, &Principal::new("a", AuthMethod::ApiKey));
        RequestFacts::note_request(&ext, &parsed("x"));
        assert!(ext.get::<RequestFacts>().is_none());
    }

    #[test]
    fn notes_reach_every_clone_and_a_later_request_replaces_an_earlier_one() {
        let facts = RequestFacts::new();
        let mut ext = Extensions::new();
        ext.insert(facts.clone());
        assert!(facts.principal().is_none() && facts.request().is_none());
        RequestFacts::note_principal(&ext, &Principal::new("alice", AuthMethod::Jwt));
        RequestFacts::note_request(&ext, &parsed("first"));
        RequestFacts::note_request(&ext, &parsed("second"));
        assert_eq!(facts.principal().unwrap().id(), "alice");
        assert_eq!(facts.request().unwrap().tool_name(), Some("second"));
        let shared = RequestFacts::get_or_insert(&mut ext);
        assert_eq!(shared.principal().unwrap().id(), "alice", "the same record");
        let mut empty = Extensions::new();
        let fresh = RequestFacts::get_or_insert(&mut empty);
        RequestFacts::note_principal(&empty, &Principal::new("bob", AuthMethod::Basic));
        assert_eq!(
            fresh.principal().unwrap().id(),
            "bob",
            "inserted and returned"
        );
        let dbg = format!("{facts:?}");
        assert_eq!(dbg, "RequestFacts { principal: true, request: true }");
    }
}
