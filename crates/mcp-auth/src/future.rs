//! The response future shared by [`Auth`](crate::Auth) and [`Authorize`](crate::Authorize).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use mcp_core::Principal;
use pin_project_lite::pin_project;

pub(crate) type BoxResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<B>, E>> + Send + 'static>>;

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Inner { #[pin] fut: F, principal: Option<Principal> },
        Ready { response: Option<Response<B>> },
        Boxed { fut: BoxResponseFuture<B, E> },
    }
}

pin_project! {
    /// Response future of the authentication and authorization services: the inner
    /// service's response (with the [`Principal`] added to its extensions), a rejection,
    /// or, when an authenticator had to wait, a boxed future doing both.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn inner(fut: F, principal: Option<Principal>) -> Self {
        Self {
            kind: Kind::Inner { fut, principal },
        }
    }

    pub(crate) fn ready(response: Response<B>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn boxed(fut: BoxResponseFuture<B, E>) -> Self {
        Self {
            kind: Kind::Boxed { fut },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut, principal } => {
                let mut response = ready!(fut.poll(cx))?;
                if let Some(p) = principal.take() {
                    response.extensions_mut().insert(p);
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                // Polled again after completion: a contract violation; never complete.
                None => Poll::Pending,
            },
            KindProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}
