//! RequestAuthentication: JWT extraction, verification against JWKS (inline or fetched and refreshed), and
//! the [`crate::attrs::RequestAuth`] a verified token yields.
