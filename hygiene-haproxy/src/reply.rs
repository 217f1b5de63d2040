//! From commands to one line and from HAProxy's replies to errors.

use crate::error::HaproxyError;
use crate::parse::{self, ParseError, ReplyError};

/// Longest command line sent at once; HAProxy's CLI reads one buffer
/// (`tune.bufsize`, 16 kB by default) per line.
pub(crate) const MAX_LINE: usize = 8 * 1024;

/// Splits a reply into `count` bodies. When the framing is wrong but the
/// reply starts with a known error line (HAProxy refusing the whole line),
/// that error is the one reported.
pub(crate) fn split<'a>(
    node: &str,
    line: &str,
    raw: &'a str,
    count: usize,
) -> Result<Vec<&'a str>, HaproxyError> {
    parse::split_replies(raw, count).map_err(|m| {
        let first = raw.split("\n\n").next().unwrap_or_default();
        match parse::classify(first) {
            Some(e @ (ReplyError::PermissionDenied | ReplyError::UnknownCommand(_))) => {
                reply_error(node, line, None, ParseError::Reply(e))
            }
            _ => HaproxyError::Protocol {
                node: node.to_owned(),
                message: format!("`{line}`: {m}"),
            },
        }
    })
}

/// Splits commands into lines short enough for HAProxy's CLI buffer.
pub(crate) fn chunks(cmds: &[(String, String, String)]) -> Vec<&[(String, String, String)]> {
    let mut out = Vec::new();
    let (mut start, mut len) = (0, 0);
    for (i, (c, _, _)) in cmds.iter().enumerate() {
        if i > start && len + c.len() + 2 > MAX_LINE {
            out.push(&cmds[start..i]);
            start = i;
            len = 0;
        }
        len += c.len() + 2;
    }
    if start < cmds.len() {
        out.push(&cmds[start..]);
    }
    out
}

/// The one place HAProxy's replies become errors.
pub(crate) fn reply_error(
    node: &str,
    command: &str,
    target: Option<(&str, &str)>,
    e: ParseError,
) -> HaproxyError {
    let node = node.to_owned();
    let command = command.to_owned();
    match e {
        ParseError::Reply(ReplyError::PermissionDenied) => {
            HaproxyError::PermissionDenied { node, command }
        }
        ParseError::Reply(ReplyError::NoSuchBackend) => HaproxyError::NoSuchBackend {
            node,
            backend: target.map(|(b, _)| b.to_owned()).unwrap_or(command),
        },
        ParseError::Reply(ReplyError::NoSuchServer) => match target {
            Some((b, s)) => HaproxyError::NoSuchServer {
                node,
                backend: b.to_owned(),
                server: s.to_owned(),
            },
            None => HaproxyError::Rejected {
                node,
                command,
                reply: "No such server.".into(),
            },
        },
        ParseError::Reply(ReplyError::UnknownCommand(reply)) => HaproxyError::UnknownCommand {
            node,
            command,
            reply,
        },
        ParseError::Reply(ReplyError::Other(reply)) => HaproxyError::Rejected {
            node,
            command,
            reply,
        },
        ParseError::Format(message) => HaproxyError::Protocol {
            node,
            message: format!("`{command}`: {message}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_batches_are_split() {
        let cmds: Vec<(String, String, String)> = (0..1000)
            .map(|i| {
                (
                    format!("set server web/s{i} state drain"),
                    "web".into(),
                    format!("s{i}"),
                )
            })
            .collect();
        let parts = chunks(&cmds);
        assert!(parts.len() > 1);
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), 1000);
        for p in parts {
            let line: usize = p.iter().map(|(c, _, _)| c.len() + 2).sum();
            assert!(line <= MAX_LINE);
        }
    }
}
