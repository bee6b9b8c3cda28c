//! Connection settings shared by every process, validation of names that become part of
//! keys and queue names, durations as people write them, and redaction of secrets in URLs.
//! The parsers return small typed errors whose messages say what to write instead, so they
//! serve as clap value parsers unchanged.
//!
//! The command lines build a [`ConnectionConfig`] from flags; nothing here parses a command
//! line. Passwords in URLs are never printed: [`redact_url`] is used wherever a URL reaches
//! a log line or an error.

use std::time::Duration;

/// Default broker URL (guest account of a local RabbitMQ).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/0";
/// Default namespace.
pub const DEFAULT_NAMESPACE: &str = "chunkflow";

/// Where the broker and Redis are, and which namespace of them this deployment uses.
/// Built by the command lines (flags and their environment twins) or by tests.
#[derive(Clone)]
pub struct ConnectionConfig {
    pub amqp_url: String,
    pub redis_url: String,
    /// Prefix of every queue name and Redis key (validated by [`parse_namespace`]).
    pub namespace: String,
    /// How long to wait for one Redis reply before giving up.
    pub redis_timeout: Duration,
}

impl std::fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("namespace", &self.namespace)
            .field("redis_timeout", &self.redis_timeout)
            .finish()
    }
}

impl ConnectionConfig {
    /// Settings for a local broker and Redis in the given namespace (tests, examples).
    pub fn local(namespace: &str) -> Self {
        ConnectionConfig {
            amqp_url: DEFAULT_AMQP_URL.to_string(),
            redis_url: DEFAULT_REDIS_URL.to_string(),
            namespace: namespace.to_string(),
            redis_timeout: Duration::from_secs(30),
        }
    }
}

/// Replaces the password of a URL's user info with `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let redacted = match userinfo.find(':') {
                Some(colon) => format!("{}:***", &userinfo[..colon]),
                None => userinfo.to_string(),
            };
            format!("{}{}{}", &url[..scheme_end + 3], redacted, &rest[at..])
        }
        None => url.to_string(),
    }
}

fn is_safe_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// A namespace that cannot become part of keys and queue names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid namespace: use 1 to 64 letters, digits, `-` or `_`")]
pub struct InvalidNamespace(pub String);

/// Validates a namespace: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn parse_namespace(text: &str) -> Result<String, InvalidNamespace> {
    if text.is_empty() || text.len() > 64 || !text.chars().all(is_safe_char) {
        return Err(InvalidNamespace(text.to_string()));
    }
    Ok(text.to_string())
}

/// A duration people wrote that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("`{text}` is not a duration: use e.g. 500ms, 30s, 5m, 24h, 7d")]
    NotADuration { text: String },
    #[error("`{text}` has an unknown time unit `{unit}`: use ms, s, m, h or d")]
    UnknownUnit { text: String, unit: String },
}

/// Parses `250ms`, `30s`, `5m`, `24h`, `7d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let number: u64 = digits.parse().map_err(|_| DurationError::NotADuration {
        text: text.to_string(),
    })?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" | "min" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        "d" => Duration::from_secs(number.saturating_mul(86_400)),
        other => {
            return Err(DurationError::UnknownUnit {
                text: text.to_string(),
                unit: other.to_string(),
            })
        }
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://:p%40ss@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        assert_eq!(redact_url("redis://127.0.0.1/0"), "redis://127.0.0.1/0");
        assert_eq!(
            redact_url("redis://user@h/0?x=a@b"),
            "redis://user@h/0?x=a@b"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn validates_names() {
        assert!(parse_namespace("t-123_ab").is_ok());
        for bad in ["", "a.b", "a:b", "a{b}", "a*", "a b", &"x".repeat(65)] {
            assert!(parse_namespace(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_namespace("a.b").unwrap_err().to_string(),
            "`a.b` is not a valid namespace: use 1 to 64 letters, digits, `-` or `_`"
        );
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(
            parse_duration("5 parsecs").unwrap_err().to_string(),
            "`5 parsecs` has an unknown time unit `parsecs`: use ms, s, m, h or d"
        );
        assert_eq!(
            parse_duration("").unwrap_err().to_string(),
            "`` is not a duration: use e.g. 500ms, 30s, 5m, 24h, 7d"
        );
    }
}
