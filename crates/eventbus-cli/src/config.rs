//! The TOML file of named consumers: topics, group and settings per name.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use eventbus::ConsumerSettings;
use serde::Deserialize;

use crate::error::CliError;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    #[serde(default)]
    pub(crate) consumers: BTreeMap<String, ConsumerConfig>,
}

/// `[consumers.NAME]`: every field optional, code gives the defaults.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerConfig {
    pub(crate) topics: Option<Vec<String>>,
    pub(crate) group: Option<String>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) backoff_base_ms: Option<u64>,
    pub(crate) backoff_max_ms: Option<u64>,
    pub(crate) consecutive_errors_limit: Option<u32>,
    pub(crate) shutdown_timeout_ms: Option<u64>,
    pub(crate) handler_timeout_ms: Option<u64>,
    pub(crate) dead_letter_topic: Option<String>,
}

impl FileConfig {
    pub(crate) fn load(path: &Path) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::File {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "{} is not a valid consumer file: {e}",
                path.display()
            ))
        })
    }
}

impl ConsumerConfig {
    /// Applies the settings the file gives over the bus's.
    pub(crate) fn apply(&self, settings: &mut ConsumerSettings) {
        let ms = Duration::from_millis;
        if let Some(v) = self.concurrency {
            settings.concurrency = v.max(1);
        }
        if let Some(v) = self.max_attempts {
            settings.retry.max_attempts = v.max(1);
        }
        if let Some(v) = self.backoff_base_ms {
            settings.retry.base = ms(v);
        }
        if let Some(v) = self.backoff_max_ms {
            settings.retry.cap = ms(v);
        }
        if let Some(v) = self.consecutive_errors_limit {
            settings.consecutive_error_limit = v;
        }
        if let Some(v) = self.shutdown_timeout_ms {
            settings.shutdown_timeout = ms(v);
        }
        if let Some(v) = self.handler_timeout_ms {
            settings.handler_timeout = Some(ms(v));
        }
        if let Some(v) = &self.dead_letter_topic {
            settings.dead_letter_topic.clone_from(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sets_what_it_names_and_nothing_else() {
        let file: FileConfig = toml::from_str(
            "[consumers.billing]\ntopics = [\"orders\"]\nconcurrency = 4\nmax_attempts = 5\nhandler_timeout_ms = 250\n",
        )
        .expect("valid file");
        let billing = &file.consumers["billing"];
        assert_eq!(billing.topics.as_deref(), Some(&["orders".to_owned()][..]));
        let mut settings = ConsumerSettings::default();
        let before = settings.clone();
        billing.apply(&mut settings);
        assert_eq!(settings.concurrency, 4);
        assert_eq!(settings.retry.max_attempts, 5);
        assert_eq!(settings.handler_timeout, Some(Duration::from_millis(250)));
        assert_eq!(settings.dead_letter_topic, before.dead_letter_topic);
        assert_eq!(settings.shutdown_timeout, before.shutdown_timeout);
    }

    #[test]
    fn a_misspelt_setting_is_refused_with_where_it_is() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("consumers.toml");
        std::fs::write(&path, "[consumers.billing]\nconcurency = 4\n").expect("write");
        let error = FileConfig::load(&path).unwrap_err().to_string();
        assert!(error.contains("consumers.toml"), "{error}");
        assert!(error.contains("concurency"), "{error}");
    }
}
