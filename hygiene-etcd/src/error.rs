//! etcd's errors, mapped to [`LeaseError`] in one place.

use hygiene_core::lease::LeaseError;
use tonic::Code;

/// Maps an etcd client error of `what` (the call: `"acquire web"`) to the
/// lease error a caller can act on.
pub(crate) fn map(store: &str, what: &str, e: etcd_client::Error) -> LeaseError {
    let message = format!("{what}: {e}");
    match &e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Internal => LeaseError::unavailable(store, message, Some(Box::new(e))),
            Code::Unauthenticated | Code::InvalidArgument
                if s.code() == Code::Unauthenticated
                    || s.message().contains("authentication failed") =>
            {
                LeaseError::Config {
                store: store.to_owned(),
                message: format!(
                    "{what}: etcd refused the credentials ({}): check the user and its password (password_env / password_file)",
                    s.message()
                ),
                }
            }
            Code::PermissionDenied => LeaseError::Config {
                store: store.to_owned(),
                message: format!(
                    "{what}: etcd denied it ({}): grant the user readwrite on the prefix's keys (etcdctl role grant-permission --prefix)",
                    s.message()
                ),
            },
            Code::InvalidArgument if s.message().contains("too large") => LeaseError::store(
                store,
                format!("{what}: etcd refused a request this large ({}): raise its --max-request-bytes, or split the pool", s.message()),
                Some(Box::new(e)),
            ),
            _ => LeaseError::store(store, message, Some(Box::new(e))),
        },
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::EndpointError(_)
        | etcd_client::Error::LeaseKeepAliveError(_) => {
            LeaseError::unavailable(store, message, Some(Box::new(e)))
        }
        etcd_client::Error::InvalidArgs(_)
        | etcd_client::Error::InvalidUri(_)
        | etcd_client::Error::InvalidMetadataValue(_) => LeaseError::Config {
            store: store.to_owned(),
            message,
        },
        _ => LeaseError::store(store, message, Some(Box::new(e))),
    }
}

/// Whether `e` says the etcd lease is gone (expired or revoked).
pub(crate) fn lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == Code::NotFound && s.message().contains("lease not found")
        }
        _ => false,
    }
}
