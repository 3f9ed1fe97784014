//! The response future shared by the request-side layers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use mcp_core::{Rejection, RejectionReason};
use pin_project_lite::pin_project;

use crate::layer::SanitizeOutcome;

pin_project! {
    /// Response future of [`Sanitize`](crate::Sanitize), [`Precheck`](crate::Precheck) and
    /// [`OriginGuard`](crate::OriginGuard): the inner service's future, or a rejection
    /// decided before calling it.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner {
            #[pin]
            future: F,
            outcome: Option<SanitizeOutcome>,
        },
        Rejected {
            response: Option<Response<B>>,
        },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn inner(future: F, outcome: Option<SanitizeOutcome>) -> Self {
        Self {
            kind: Kind::Inner { future, outcome },
        }
    }

    pub(crate) fn rejected(response: Response<B>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<Bytes>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future, outcome } => match future.poll(cx) {
                Poll::Ready(Ok(mut response)) => {
                    if let Some(o) = outcome.take() {
                        response.extensions_mut().insert(o);
                    }
                    Poll::Ready(Ok(response))
                }
                other => other,
            },
            KindProj::Rejected { response } => Poll::Ready(Ok(response
                .take()
                // Polled again after completion: answer 500 rather than panic.
                .unwrap_or_else(|| Rejection::new(RejectionReason::Internal).into_response()))),
        }
    }
}
