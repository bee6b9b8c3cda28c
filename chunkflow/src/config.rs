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
/// How long a Redis outage is waited out by default before a process gives up.
pub const DEFAULT_OUTAGE_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the broker and Redis are, and which namespace of them this deployment uses.
/// Built by the command lines (flags and their environment twins) or by tests.
#[derive(Clone)]
pub struct ConnectionConfig {
    pub amqp_url: String,
    /// One Redis URL, or several separated by commas: the seed nodes of one Redis Cluster
    /// (see [`split_url_list`]).
    pub redis_url: String,
    /// Whether Redis is one server or a cluster, or to ask it (`INFO cluster`).
    pub redis_mode: RedisMode,
    /// Replicas that must hold a write that must not be lost (a commit, a seal, a job's
    /// end) before the delivery that made it is acked (`WAIT`); 0: do not wait.
    pub redis_min_replicas: u32,
    /// Prefix of every queue name and Redis key (validated by [`parse_namespace`]).
    pub namespace: String,
    /// How long to wait for one Redis reply before giving up.
    pub redis_timeout: Duration,
    /// How long to wait for RabbitMQ to answer one operation (connect, declare, consume,
    /// a publisher confirm) before giving up on it.
    pub broker_timeout: Duration,
    /// How long a Redis outage (unreachable, not answering, out of memory) is waited out
    /// before the process gives up: workers and reducers exit with an error, the producer's
    /// Redis retries fail.
    pub outage_timeout: Duration,
}

impl std::fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_mode", &self.redis_mode)
            .field("redis_min_replicas", &self.redis_min_replicas)
            .field("namespace", &self.namespace)
            .field("redis_timeout", &self.redis_timeout)
            .field("broker_timeout", &self.broker_timeout)
            .field("outage_timeout", &self.outage_timeout)
            .finish()
    }
}

impl ConnectionConfig {
    /// The RabbitMQ URLs of [`ConnectionConfig::amqp_url`]: one, or the nodes of one
    /// cluster (see [`split_url_list`]). Validated where they are connected to
    /// (`broker::topology::BrokerNodes`).
    pub fn amqp_urls(&self) -> Vec<&str> {
        split_url_list(&self.amqp_url)
    }

    /// Settings for a local broker and Redis in the given namespace (tests, examples).
    pub fn local(namespace: &str) -> Self {
        ConnectionConfig {
            amqp_url: DEFAULT_AMQP_URL.to_string(),
            redis_url: DEFAULT_REDIS_URL.to_string(),
            redis_mode: RedisMode::Auto,
            redis_min_replicas: 0,
            namespace: namespace.to_string(),
            redis_timeout: Duration::from_secs(30),
            broker_timeout: Duration::from_secs(30),
            outage_timeout: DEFAULT_OUTAGE_TIMEOUT,
        }
    }
}

/// How chunkflow talks to Redis: to one server, or to a Redis Cluster through a cluster
/// client (which follows slots to their masters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedisMode {
    /// Ask the server (`INFO cluster`: `cluster_enabled:1` means a cluster node).
    #[default]
    Auto,
    Standalone,
    Cluster,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Auto => "auto",
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
        }
    }
}

impl std::fmt::Display for RedisMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Redis mode people wrote that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a Redis mode: use auto, standalone or cluster")]
pub struct InvalidRedisMode(pub String);

/// Parses `auto`, `standalone` or `cluster`.
pub fn parse_redis_mode(text: &str) -> Result<RedisMode, InvalidRedisMode> {
    match text.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(RedisMode::Auto),
        "standalone" => Ok(RedisMode::Standalone),
        "cluster" => Ok(RedisMode::Cluster),
        _ => Err(InvalidRedisMode(text.to_string())),
    }
}

/// The URLs of a comma-separated list (`amqp://a:5672/%2f,amqp://b:5672/%2f`), in order,
/// spaces around each trimmed and empty entries (a trailing comma) dropped. A single URL is
/// a list of one. A comma inside a URL (in a password) must be written `%2C`.
pub fn split_url_list(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// Query parameters whose value is a credential (`redis+unix:///sock?pass=...`).
const SECRET_PARAMETERS: &[&str] = &[
    "pass",
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "auth",
    "key",
    "access_key",
    "secret_key",
];

/// Hides every credential a URL may carry, whether or not it parses: the password of its
/// user info (`scheme://user:***@host`), the values of credential query parameters
/// (`?pass=***`), and, in a string that is not `scheme://...` but has an `@` (a mistyped
/// `amqp//user:pw@host` or `amqp:/user:pw@host`), everything before the last `@`. A
/// comma-separated list of URLs ([`split_url_list`]) has each of its URLs redacted.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return redact_url_list(url);
    }
    let (rest, fragment) = url.split_at(url.find('#').unwrap_or(url.len()));
    let (head, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    format!(
        "{}{}{fragment}",
        redact_user_info(head),
        redact_query(query)
    )
}

/// [`redact_url`] of a string with commas: each entry redacted when every entry looks like
/// a URL of its own (`scheme://...`). Otherwise a comma is inside a URL (a raw comma in a
/// password, or in a query) or an entry is mistyped, and where one URL ends is unknown:
/// everything from the first scheme to the last `@` is hidden.
fn redact_url_list(list: &str) -> String {
    let entries: Vec<&str> = list.split(',').collect();
    if entries
        .iter()
        .all(|entry| entry.trim().is_empty() || entry.contains("://"))
    {
        return entries
            .iter()
            .map(|entry| redact_url(entry))
            .collect::<Vec<_>>()
            .join(",");
    }
    match list.rfind('@') {
        Some(at) => {
            let keep = list
                .find("://")
                .map(|scheme| scheme + 3)
                .filter(|&end| end <= at)
                .unwrap_or(0);
            let tail = &list[at..];
            let (tail, fragment) = tail.split_at(tail.find('#').unwrap_or(tail.len()));
            let (host, query) = tail.split_at(tail.find('?').unwrap_or(tail.len()));
            format!(
                "{}***{host}{}{fragment}",
                &list[..keep],
                redact_query(query)
            )
        }
        None => {
            let (rest, fragment) = list.split_at(list.find('#').unwrap_or(list.len()));
            let (head, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
            format!("{head}{}{fragment}", redact_query(query))
        }
    }
}

/// The credentials a URL carries, found as leniently as [`redact_url`] hides them: the
/// password of its user info (everything before the last `@` when the string does not parse
/// as `scheme://`) and the values of credential query parameters; for a comma-separated
/// list, those of each entry too.
fn url_secrets(url: &str) -> Vec<&str> {
    let mut secrets = url_secrets_of_one(url);
    if url.contains(',') {
        for entry in url.split(',') {
            secrets.extend(url_secrets_of_one(entry));
        }
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
    }
    secrets
}

fn url_secrets_of_one(url: &str) -> Vec<&str> {
    let (rest, _fragment) = url.split_at(url.find('#').unwrap_or(url.len()));
    let (head, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
    let mut secrets = Vec::new();
    let authority = match head.find("://") {
        Some(scheme_end) => {
            let rest = &head[scheme_end + 3..];
            &rest[..rest.find('/').unwrap_or(rest.len())]
        }
        None => head,
    };
    if let Some(at) = authority.rfind('@') {
        let user_info = &authority[..at];
        match (head.contains("://"), user_info.find(':')) {
            (true, Some(colon)) => secrets.push(&user_info[colon + 1..]),
            (true, None) => {}
            (false, colon) => {
                secrets.push(user_info);
                if let Some(colon) = colon {
                    secrets.push(&user_info[colon + 1..]);
                }
            }
        }
    }
    for parameter in query.trim_start_matches('?').split('&') {
        if let Some((name, value)) = parameter.split_once('=') {
            if SECRET_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) {
                secrets.push(value);
            }
        }
    }
    secrets.retain(|secret| !secret.is_empty());
    // Longest first, so a secret that contains another is replaced whole.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    secrets
}

/// `text` (an error from a library that quotes the URL it was given) with the URL shown
/// redacted and every credential of the URL replaced by `***`, wherever it appears.
pub fn redact_within(text: &str, url: &str) -> String {
    let mut text = text.replace(url, &redact_url(url));
    for one in split_url_list(url) {
        text = text.replace(one, &redact_url(one));
    }
    for secret in url_secrets(url) {
        text = text.replace(secret, "***");
    }
    text
}

fn redact_user_info(head: &str) -> String {
    if let Some(scheme_end) = head.find("://") {
        let rest = &head[scheme_end + 3..];
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        return match authority.rfind('@') {
            Some(at) => {
                let user_info = &authority[..at];
                let redacted = match user_info.find(':') {
                    Some(colon) => format!("{}:***", &user_info[..colon]),
                    None => user_info.to_string(),
                };
                format!("{}{}{}", &head[..scheme_end + 3], redacted, &rest[at..])
            }
            None => head.to_string(),
        };
    }
    match head.rfind('@') {
        // Not a URL we can read: keep what looks like a scheme and its punctuation, hide
        // the rest up to the host.
        Some(at) => {
            let scheme_len = head
                .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
                .unwrap_or(0);
            let punctuation = head[scheme_len..]
                .find(|c: char| c != ':' && c != '/')
                .unwrap_or(0);
            let keep = (scheme_len + punctuation).min(at);
            format!("{}***{}", &head[..keep], &head[at..])
        }
        None => head.to_string(),
    }
}

fn redact_query(query: &str) -> String {
    let Some(separator) = query.chars().next() else {
        return String::new();
    };
    let parameters =
        query[separator.len_utf8()..]
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some((name, _))
                    if SECRET_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) =>
                {
                    format!("{name}=***")
                }
                _ => parameter.to_string(),
            });
    format!("{separator}{}", parameters.collect::<Vec<_>>().join("&"))
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
    fn redacts_credentials_inside_other_text() {
        for url in [
            "u:PW@127.0.0.1:5672",
            "amqp//u:PW@h",
            "amqp://u:PW@h/%2f",
            "redis+unix:///s?pass=PW",
        ] {
            let text = format!("Invalid URL: '{url}' (and again: PW)");
            let redacted = redact_within(&text, url);
            assert!(!redacted.contains("PW"), "{url} -> {redacted}");
            assert!(redacted.starts_with("Invalid URL: '"), "{redacted}");
        }
        assert_eq!(
            redact_within("no secret here", "amqp://h/%2f"),
            "no secret here"
        );
    }

    #[test]
    fn redacts_credentials_of_urls_that_do_not_parse() {
        for (url, shown) in [
            ("amqp//u:PW@h", "amqp//***@h"),
            ("amqp:/u:PW@h:5691/%2f", "amqp:/***@h:5691/%2f"),
            ("redis//:PW@h", "redis//:***@h"),
            ("http//u:PW@h", "http//***@h"),
            ("u:PW@h", "u:***@h"),
            ("redis+unix:///sock?pass=PW", "redis+unix:///sock?pass=***"),
            (
                "redis+unix:///sock?db=1&password=PW",
                "redis+unix:///sock?db=1&password=***",
            ),
            ("redis://h/0?Token=PW#x", "redis://h/0?Token=***#x"),
            (
                "amqp://u:PW@h:5672/%2f?heartbeat=10",
                "amqp://u:***@h:5672/%2f?heartbeat=10",
            ),
        ] {
            let redacted = redact_url(url);
            assert_eq!(redacted, shown, "{url}");
            assert!(!redacted.contains("PW"), "{url} -> {redacted}");
        }
    }

    #[test]
    fn splits_url_lists() {
        assert_eq!(split_url_list("amqp://h/%2f"), ["amqp://h/%2f"]);
        assert_eq!(
            split_url_list(" amqp://a:1/%2f , amqp://b:2/%2f,,amqp://c:3/%2f, "),
            ["amqp://a:1/%2f", "amqp://b:2/%2f", "amqp://c:3/%2f"]
        );
        assert!(split_url_list(" , ").is_empty());
        let mut config = ConnectionConfig::local("ns");
        config.amqp_url = "amqp://u:p@a/%2f,amqp://u:p@b/%2f".into();
        assert_eq!(config.amqp_urls(), ["amqp://u:p@a/%2f", "amqp://u:p@b/%2f"]);
    }

    #[test]
    fn redacts_every_password_of_a_list() {
        for (list, shown) in [
            (
                "amqp://u:PW1@a:5681/%2f,amqp://u:PW2@b:5682/%2f",
                "amqp://u:***@a:5681/%2f,amqp://u:***@b:5682/%2f",
            ),
            (
                "amqp://u:PW1@a/%2f?heartbeat=5, amqp://b/%2f,",
                "amqp://u:***@a/%2f?heartbeat=5, amqp://b/%2f,",
            ),
            // A raw comma in a password: not a list, everything up to the host hidden.
            ("amqp://u:P,W@a:5681/%2f", "amqp://***@a:5681/%2f"),
            // A mistyped entry: where one URL ends is unknown.
            ("amqp://u:PW1@a/%2f,amqp:/u:PW2@b", "amqp://***@b"),
            ("u:PW@h,amqp://b/%2f", "***@h,amqp://b/%2f"),
            ("amqp://h/?x=1,u:PW@b", "amqp://***@b"),
            ("redis://h/0?x=a,b", "redis://h/0?x=a,b"),
            (
                "redis://h/0?x=a,b&password=PW",
                "redis://h/0?x=a,b&password=***",
            ),
        ] {
            let redacted = redact_url(list);
            assert_eq!(redacted, shown, "{list}");
            assert!(
                !redacted.contains("PW") && !redacted.contains("P,W"),
                "{list}"
            );
            let text = format!("cannot use {list} (given: '{list}')");
            let within = redact_within(&text, list);
            assert!(!within.contains("PW"), "{list} -> {within}");
        }
        let mut config = ConnectionConfig::local("ns");
        config.amqp_url = "amqp://u:PW1@a/%2f,amqp://u:PW2@b/%2f".into();
        let debug = format!("{config:?}");
        assert!(!debug.contains("PW"), "{debug}");
    }

    #[test]
    fn parses_redis_modes() {
        assert_eq!(parse_redis_mode("auto"), Ok(RedisMode::Auto));
        assert_eq!(parse_redis_mode("Cluster"), Ok(RedisMode::Cluster));
        assert_eq!(parse_redis_mode("standalone"), Ok(RedisMode::Standalone));
        assert_eq!(
            parse_redis_mode("sentinel").unwrap_err().to_string(),
            "`sentinel` is not a Redis mode: use auto, standalone or cluster"
        );
        assert_eq!(RedisMode::default(), RedisMode::Auto);
    }

    #[test]
    fn amqp_lists_split_and_no_password_of_a_list_shows() {
        let mut config = ConnectionConfig::local("ns");
        config.amqp_url = "amqp://u:p@a/%2f, amqp://u:p@b/%2f".into();
        assert_eq!(config.amqp_urls(), ["amqp://u:p@a/%2f", "amqp://u:p@b/%2f"]);
        for list in [
            "amqp://u:PW1@a:5681/%2f,amqp://u:PW2@b:5682/%2f",
            "amqp://u:PW1@a/%2f?heartbeat=5, amqp://b/%2f,",
            "amqp://u:P,W@a:5681/%2f",
            "amqp://u:PW1@a/%2f,amqp:/u:PW2@b",
            "u:PW@h,amqp://b/%2f",
            "redis://h/0?x=a,b&password=PW",
        ] {
            let redacted = redact_url(list);
            assert!(
                !redacted.contains("PW") && !redacted.contains("P,W"),
                "{list} -> {redacted}"
            );
            let text = format!("cannot use {list} (given: '{list}')");
            let within = redact_within(&text, list);
            assert!(!within.contains("PW"), "{list} -> {within}");
        }
        config.amqp_url = "amqp://u:PW1@a/%2f,amqp://u:PW2@b/%2f".into();
        let debug = format!("{config:?}");
        assert!(!debug.contains("PW"), "{debug}");
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
