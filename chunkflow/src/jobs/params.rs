//! Reading a job's parameters (`JobSpec.params`, JSON) into the job's typed settings.
//!
//! Each job declares its parameters as a serde struct with `deny_unknown_fields`, so a flag
//! that does not belong to the job (`--pattern` on a wordcount) is refused by the producer
//! before anything is published, naming the job.

use serde::de::DeserializeOwned;

use super::JobError;

/// Parses `params` (`null` counts as `{}`) into `T`; errors name the job `kind`.
pub fn parse<T: DeserializeOwned>(kind: &str, params: &serde_json::Value) -> Result<T, JobError> {
    let value = match params {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        other => other.clone(),
    };
    serde_json::from_value(value)
        .map_err(|error| JobError::new(format!("invalid parameters for the {kind} job: {error}")))
}

/// A record's bytes, quoted and shortened to 80 characters, for error messages.
pub fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim_end_matches(['\n', '\r']);
    let mut short: String = trimmed.chars().take(80).collect();
    if short.len() < trimmed.len() {
        short.push('…');
    }
    format!("{short:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct P {
        #[serde(default)]
        pattern: Option<String>,
    }

    #[test]
    fn null_is_empty_and_unknown_fields_are_refused() {
        assert_eq!(
            parse::<P>("t", &serde_json::Value::Null).unwrap(),
            P { pattern: None }
        );
        let err = parse::<P>("t", &serde_json::json!({"key": ["a"]})).unwrap_err();
        assert!(
            err.message.contains("the t job") && err.message.contains("key"),
            "{}",
            err.message
        );
    }
}
