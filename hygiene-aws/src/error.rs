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
    /// The SDK's own timeout fired, `after` this long.
    Timeout { location: String, after: Duration },
    /// A reply that could not be read to its end (I/O: cut off, reset).
    Truncated { location: String, source: BoxError },
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
    /// The SSM document the call named.
    pub(crate) document: String,
}

impl Subject {
    /// A call about target groups (or a load balancer).
    pub(crate) fn groups(groups: impl Into<String>) -> Self {
        Self {
            groups: groups.into(),
            ..Self::default()
        }
    }

    /// A call about targets or instances.
    pub(crate) fn targets(targets: impl Into<String>) -> Self {
        Self {
            targets: targets.into(),
            ..Self::default()
        }
    }

    /// The same, also naming these targets or instances.
    pub(crate) fn with_targets(mut self, targets: impl Into<String>) -> Self {
        self.targets = targets.into();
        self
    }

    /// The same, also naming this SSM document.
    pub(crate) fn with_document(mut self, document: impl Into<String>) -> Self {
        self.document = document.into();
        self
    }
}

/// Whether an I/O error is somewhere in `err`'s source chain (a reply cut
/// off, a connection reset while the body was read).
fn caused_by_io(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<std::io::Error>() {
            return true;
        }
        cur = e.source();
    }
    false
}

impl AwsError {
    /// Classifies an SDK error of `operation` on `service`; `elapsed` is
    /// how long the call took (retries included), for a timeout's message.
    pub(crate) fn from_sdk<E>(
        service: &str,
        operation: &str,
        subject: Subject,
        elapsed: Duration,
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
            SdkError::TimeoutError(_) => Self::Timeout {
                location,
                after: elapsed,
            },
            SdkError::DispatchFailure(ref d) if d.is_timeout() => Self::Timeout {
                location,
                after: elapsed,
            },
            SdkError::DispatchFailure(_) => Self::Dispatch {
                location,
                source: Box::new(err),
            },
            SdkError::ResponseError(_)
                if std::error::Error::source(&err).is_some_and(caused_by_io) =>
            {
                Self::Truncated {
                    location,
                    source: Box::new(err),
                }
            }
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
                        Error::NotFound { kind: "target", name: or_text(subject.targets, &text), location: Some(location) }
                    }
                    "InvalidInstanceId" | "InvalidInstanceIdException" => {
                        Error::NotFound { kind: "instance", name: or_text(subject.targets, &text), location: Some(location) }
                    }
                    "InvalidCommandId" | "InvalidCommandIdException" | "InvocationDoesNotExist" => {
                        Error::NotFound { kind: "SSM command", name: text, location: Some(location) }
                    }
                    "InvalidDocument" | "InvalidDocumentException" => {
                        Error::NotFound { kind: "SSM document", name: or_text(subject.document, &text), location: Some(location) }
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
            AwsError::Timeout { location, after } => Error::Timeout { operation: location, after },
            AwsError::Truncated { location, source } => Error::Unavailable {
                location,
                message: format!("the reply was cut off: {}", chain(source.as_ref())),
                source: Some(source),
            },
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

/// An error and its sources on one line (the SDK's own text, "response
/// error", says nothing of the cause).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let m = e.to_string();
        if !text.contains(&m) {
            text.push_str(": ");
            text.push_str(&m);
        }
        cur = e.source();
    }
    text
}

/// `name`, or the service's own text when the call named nothing.
fn or_text(name: String, text: &str) -> String {
    if name.is_empty() {
        text.to_owned()
    } else {
        name
    }
}

/// Maps an SDK error of `operation` on `service` (`elbv2`, `ssm`) into a
/// [`hygiene_core::Error`]; `elapsed` is how long the call took.
pub(crate) fn map_sdk<E>(
    service: &str,
    operation: &str,
    subject: Subject,
    elapsed: Duration,
    err: SdkError<E, HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    AwsError::from_sdk(service, operation, subject, elapsed, err).into()
}

/// Awaits an SDK call and maps its error, with the time the call took (for
/// a timeout's message). `subject` is only built on failure.
pub(crate) async fn call<T, E>(
    service: &str,
    operation: &str,
    subject: impl FnOnce() -> Subject + Send,
    fut: impl std::future::Future<Output = std::result::Result<T, SdkError<E, HttpResponse>>> + Send,
) -> hygiene_core::Result<T>
where
    T: Send,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let started = tokio::time::Instant::now();
    fut.await
        .map_err(|e| map_sdk(service, operation, subject(), started.elapsed(), e))
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
            Subject::targets("i-0a").with_document("My-Patch-Doc"),
            Duration::ZERO,
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
        let e = map_sdk(
            "ssm",
            "SendCommand",
            Subject::default(),
            Duration::from_millis(3100),
            timeout,
        );
        assert!(
            matches!(e, Error::Timeout { after, .. } if after == Duration::from_millis(3100)),
            "{e:?}"
        );
        assert!(e.to_string().contains("3.1s"), "{e}");
        let construction: SdkError<SendCommandError, HttpResponse> =
            SdkError::construction_failure("no region");
        assert!(matches!(
            map_sdk(
                "ssm",
                "SendCommand",
                Subject::default(),
                Duration::ZERO,
                construction
            ),
            Error::InvalidConfig { .. }
        ));
    }

    fn response_error(source: BoxError) -> Error {
        let raw = HttpResponse::new(StatusCode::try_from(200).expect("status"), SdkBody::empty());
        let err: SdkError<SendCommandError, HttpResponse> = SdkError::response_error(source, raw);
        map_sdk(
            "ssm",
            "SendCommand",
            Subject::default(),
            Duration::ZERO,
            err,
        )
    }

    /// A body-read error as hyper reports a reply cut off: an I/O error
    /// somewhere down the chain.
    #[derive(Debug)]
    struct BodyError(std::io::Error);

    impl std::fmt::Display for BodyError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error reading a body from connection")
        }
    }

    impl std::error::Error for BodyError {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_reply_cut_off_is_unavailable_and_a_garbled_one_is_protocol() {
        let eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "end of file before message length reached",
        );
        let e = response_error(Box::new(BodyError(eof)));
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        assert!(e.is_retryable());
        assert!(
            e.to_string().contains("cut off") && e.to_string().contains("end of file"),
            "{e}"
        );
        let direct = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(matches!(
            response_error(Box::new(direct)),
            Error::Unavailable { .. }
        ));
        let garbled = response_error("expected `{` at line 1".into());
        assert!(matches!(garbled, Error::Protocol { .. }), "{garbled:?}");
        assert!(!garbled.is_retryable());
    }

    #[test]
    fn not_found_names_what_the_call_named() {
        let e = service("InvalidDocument", 400);
        assert!(
            matches!(&e, Error::NotFound { kind: "SSM document", name, .. } if name == "My-Patch-Doc"),
            "{e:?}"
        );
        assert!(e.to_string().contains("My-Patch-Doc"), "{e}");
        let e = service("InvalidInstanceId", 400);
        assert!(
            matches!(&e, Error::NotFound { kind: "instance", name, .. } if name == "i-0a"),
            "{e:?}"
        );
        // A call that named nothing: the service's text stands in.
        let err = SendCommandError::generic(
            ErrorMetadata::builder()
                .code("InvalidTarget")
                .message("i-0dead is not a valid target")
                .build(),
        );
        let raw = HttpResponse::new(StatusCode::try_from(400).expect("status"), SdkBody::empty());
        let e = map_sdk(
            "elbv2",
            "DescribeTargetHealth",
            Subject::groups("arn:tg"),
            Duration::ZERO,
            SdkError::service_error(err, raw),
        );
        assert!(e.to_string().contains("i-0dead"), "{e}");
    }
}
