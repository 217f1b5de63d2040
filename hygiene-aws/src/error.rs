//! AWS errors: the private classification of SDK failures and the one
//! mapping into [`hygiene_core::Error`].

use std::time::Duration;

use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use hygiene_core::{BoxError, Error};

/// Error codes AWS services use to ask for a slower request rate.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
    "ProvisionedThroughputExceededException",
    "BandwidthLimitExceeded",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Error codes that mean the credentials or their permissions are insufficient.
const PERMISSION_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
    "MissingAuthenticationToken",
    "AuthFailure",
];

/// What a failed AWS call was, before it becomes a [`hygiene_core::Error`].
#[derive(Debug)]
pub(crate) enum AwsError {
    /// The service answered with an error code.
    Service {
        /// `elbv2` or `ssm`, and the operation.
        location: String,
        /// The AWS error code (`TargetGroupNotFound`, `Throttling`, …).
        code: String,
        /// The service's message.
        message: String,
        /// HTTP status of the reply.
        status: Option<u16>,
        /// What the call was about (an ARN, an instance id), for `NotFound`.
        subject: Subject,
        /// The SDK error.
        source: BoxError,
    },
    /// No reply: connection refused, DNS, TLS, an I/O error.
    Dispatch { location: String, source: BoxError },
    /// The SDK's own timeout fired.
    Timeout { location: String },
    /// A reply that could not be parsed.
    Response { location: String, source: BoxError },
    /// The request could not even be built (missing region, bad input).
    Construction { location: String, source: BoxError },
}

/// The thing a call was about, used to name it in a `NotFound`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Subject {
    /// Target groups (or the load balancer) the call named.
    pub(crate) groups: String,
    /// Targets or instances the call named.
    pub(crate) targets: String,
}

impl Subject {
    /// A call about target groups (or a load balancer).
    pub(crate) fn groups(groups: impl Into<String>) -> Self {
        Self {
            groups: groups.into(),
            targets: String::new(),
        }
    }

    /// A call about targets or instances.
    pub(crate) fn targets(targets: impl Into<String>) -> Self {
        Self {
            groups: String::new(),
            targets: targets.into(),
        }
    }
}

impl AwsError {
    /// Classifies an SDK error of `operation` on `service`.
    pub(crate) fn from_sdk<E>(
        service: &str,
        operation: &str,
        subject: Subject,
        err: SdkError<E, HttpResponse>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let location = format!("{service} {operation}");
        match err {
            SdkError::ServiceError(ref se) => {
                let code = se.err().code().unwrap_or("Unknown").to_owned();
                let message = se.err().message().unwrap_or_default().to_owned();
                let status = Some(se.raw().status().as_u16());
                Self::Service {
                    location,
                    code,
                    message,
                    status,
                    subject,
                    source: Box::new(err),
                }
            }
            SdkError::TimeoutError(_) => Self::Timeout { location },
            SdkError::DispatchFailure(ref d) if d.is_timeout() => Self::Timeout { location },
            SdkError::DispatchFailure(_) => Self::Dispatch {
                location,
                source: Box::new(err),
            },
            SdkError::ResponseError(_) => Self::Response {
                location,
                source: Box::new(err),
            },
            _ => Self::Construction {
                location,
                source: Box::new(err),
            },
        }
    }
}

/// The one mapping from AWS failures to hygiene's error variants.
impl From<AwsError> for Error {
    fn from(e: AwsError) -> Self {
        match e {
            AwsError::Service { location, code, message, status, subject, source } => {
                let text = if message.is_empty() { code.clone() } else { format!("{code}: {message}") };
                match code.as_str() {
                    c if THROTTLING_CODES.contains(&c) || status == Some(429) => {
                        Error::Throttled { location, message: text, source: Some(source) }
                    }
                    c if PERMISSION_CODES.contains(&c) || status == Some(403) => Error::PermissionDenied {
                        location,
                        message: format!("{text}; grant the IAM permission for this call to the credentials in use"),
                        source: Some(source),
                    },
                    "TargetGroupNotFound" | "TargetGroupNotFoundException" => {
                        Error::NotFound { kind: "target group", name: subject.groups, location: Some(location) }
                    }
                    "LoadBalancerNotFound" | "LoadBalancerNotFoundException" => {
                        Error::NotFound { kind: "load balancer", name: subject.groups, location: Some(location) }
                    }
                    "InvalidTarget" | "InvalidTargetException" => {
                        Error::NotFound { kind: "target", name: subject.targets, location: Some(location) }
                    }
                    "InvalidInstanceId" | "InvalidInstanceIdException" => {
                        Error::NotFound { kind: "instance", name: subject.targets, location: Some(location) }
                    }
                    "InvalidDocument" | "InvalidDocumentException" => {
                        Error::NotFound { kind: "SSM document", name: message, location: Some(location) }
                    }
                    "InternalFailure" | "InternalError" | "InternalServerError" | "ServiceUnavailable"
                    | "ServiceUnavailableException" => Error::Unavailable { location, message: text, source: Some(source) },
                    _ if status.is_some_and(|s| s >= 500) => {
                        Error::Unavailable { location, message: text, source: Some(source) }
                    }
                    _ => Error::Rejected { location, message: text, source: Some(source) },
                }
            }
            AwsError::Dispatch { location, source } => {
                Error::Unavailable { location, message: format!("no reply: {source}"), source: Some(source) }
            }
            AwsError::Timeout { location } => Error::Timeout { operation: location, after: Duration::ZERO },
            AwsError::Response { location, source } => {
                Error::Protocol { location, message: format!("unreadable reply: {source}"), source: Some(source) }
            }
            AwsError::Construction { location, source } => Error::InvalidConfig {
                field: "aws configuration",
                message: format!("{location}: the request could not be built ({source}); check region, credentials and inputs"),
            },
        }
    }
}

/// Maps an SDK error of `operation` on `service` (`elbv2`, `ssm`) into a
/// [`hygiene_core::Error`].
pub(crate) fn map_sdk<E>(
    service: &str,
    operation: &str,
    subject: Subject,
    err: SdkError<E, HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    AwsError::from_sdk(service, operation, subject, err).into()
}

/// The AWS error code of an SDK error, if the service sent one.
pub(crate) fn code_of<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<&str> {
    err.as_service_error().and_then(ProvideErrorMetadata::code)
}

#[cfg(test)]
mod tests {
    use aws_sdk_ssm::error::ErrorMetadata;
    use aws_sdk_ssm::operation::send_command::SendCommandError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn service(code: &str, status: u16) -> Error {
        let err =
            SendCommandError::generic(ErrorMetadata::builder().code(code).message("m").build());
        let raw = HttpResponse::new(
            StatusCode::try_from(status).expect("status"),
            SdkBody::empty(),
        );
        map_sdk(
            "ssm",
            "SendCommand",
            Subject::targets("i-0a"),
            SdkError::service_error(err, raw),
        )
    }

    #[test]
    fn codes_map_to_variants() {
        assert!(matches!(
            service("ThrottlingException", 400),
            Error::Throttled { .. }
        ));
        assert!(matches!(service("Anything", 429), Error::Throttled { .. }));
        assert!(matches!(
            service("AccessDeniedException", 400),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(
            service("UnrecognizedClientException", 400),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(
            service("InvalidInstanceId", 400),
            Error::NotFound {
                kind: "instance",
                ..
            }
        ));
        assert!(matches!(
            service("TargetGroupNotFound", 400),
            Error::NotFound {
                kind: "target group",
                ..
            }
        ));
        assert!(matches!(
            service("LoadBalancerNotFound", 400),
            Error::NotFound {
                kind: "load balancer",
                ..
            }
        ));
        assert!(matches!(
            service("InternalServerError", 500),
            Error::Unavailable { .. }
        ));
        assert!(matches!(
            service("Whatever", 503),
            Error::Unavailable { .. }
        ));
        assert!(matches!(
            service("ValidationException", 400),
            Error::Rejected { .. }
        ));
        assert!(service("ThrottlingException", 400).is_retryable());
        assert!(!service("AccessDeniedException", 400).is_retryable());
    }

    #[test]
    fn transport_failures_are_retryable() {
        let timeout: SdkError<SendCommandError, HttpResponse> = SdkError::timeout_error("slow");
        assert!(matches!(
            map_sdk("ssm", "SendCommand", Subject::default(), timeout),
            Error::Timeout { .. }
        ));
        let construction: SdkError<SendCommandError, HttpResponse> =
            SdkError::construction_failure("no region");
        assert!(matches!(
            map_sdk("ssm", "SendCommand", Subject::default(), construction),
            Error::InvalidConfig { .. }
        ));
    }
}
