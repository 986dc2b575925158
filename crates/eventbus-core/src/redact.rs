//! Keeping secrets out of logs: the one redaction every `Debug` of a configuration, and every
//! error that names a URL, goes through, in the core and in every backend.
//!
//! Secrets are hidden by name (an option or property whose name says password, secret, token,
//! credential, SASL, key or PEM) and by value: once a secret's value is known, it is hidden
//! wherever it appears, in a URL, another option or an error message. A URL's password is hidden
//! by its place in the URL.

use std::fmt;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Values shorter than this are hidden by name only: replacing every `1` or `on` in a text would
/// garble it without protecting anything.
const MIN_SECRET_LEN: usize = 4;

/// Whether a setting or property called `name` holds a secret: `EVENT_BUS_KAFKA_API_SECRET`,
/// `EVENT_BUS_PULSAR_AUTH_TOKEN`, `sasl.password`, `ssl.key.pem`, `EVENT_BUS_KAFKA_SSL_KEY_PEM`, …
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase().replace('.', "_");
    const WORDS: &[&str] = &[
        "PASSWORD",
        "SECRET",
        "TOKEN",
        "CREDENTIAL",
        "SASL",
        "PASSPHRASE",
    ];
    WORDS.iter().any(|w| n.contains(w))
        || n.ends_with("_PEM")
        || n.ends_with("_KEY")
        || n.contains("_KEY_")
        || n == "KEY"
}

/// Hides the password of a URL such as `redis://user:secret@host` as `redis://user:***@host`,
/// and a user name without password (a token) entirely.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:{MASK}@{host}{path}"),
            None => format!("{scheme}://{MASK}@{host}{path}"),
        },
        None => url.to_owned(),
    }
}

/// The password part of a URL's user info, if any.
fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    Some(userinfo.split_once(':').map_or(userinfo, |(_, pw)| pw))
}

/// The secret values of one configuration, hidden wherever they appear.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Nothing known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Learns a secret value.
    pub fn secret(mut self, value: impl AsRef<str>) -> Self {
        let value = value.as_ref();
        if value.len() < MIN_SECRET_LEN {
            return self;
        }
        // `Debug` output, which [`Redactor::debug`] redacts, escapes quotes, backslashes and
        // control characters: a secret holding one shows there only escaped, and a quote also
        // cuts a URL short for the redaction by place. Found by fuzzing (issue 15).
        let debug = format!("{value:?}");
        let escaped = &debug[1..debug.len() - 1];
        for form in [value, escaped] {
            if !self.secrets.iter().any(|s| s == form) {
                self.secrets.push(form.to_owned());
            }
        }
        // Longest first, so that a secret containing another is hidden whole.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self
    }

    /// Learns the password of `url`, if it has one.
    pub fn url(self, url: &str) -> Self {
        match url_password(url) {
            Some(pw) => self.secret(pw),
            None => self,
        }
    }

    /// Learns every value whose name is secret (and URL passwords in the others).
    pub fn options<'a>(mut self, options: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        for (name, value) in options {
            self = if is_secret_name(name) {
                self.secret(value)
            } else {
                self.url(value)
            };
        }
        self
    }

    /// The secrets of a configuration: its secret options and its URL's password.
    pub fn for_config<'a>(
        url: Option<&str>,
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let redactor = Self::new().options(options);
        match url {
            Some(url) => redactor.url(url),
            None => redactor,
        }
    }

    /// `text` with URL passwords and every known secret value replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = redact_urls_in(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }

    /// The value of option `name` as it may be shown: masked when the name is secret.
    pub fn option_value(&self, name: &str, value: &str) -> String {
        if is_secret_name(name) {
            MASK.to_owned()
        } else {
            self.redact(value)
        }
    }

    /// A map of options as it may be shown, each value through [`Redactor::option_value`].
    pub fn shown<'a>(
        &self,
        options: &'a std::collections::BTreeMap<String, String>,
    ) -> std::collections::BTreeMap<&'a str, String> {
        options
            .iter()
            .map(|(k, v)| (k.as_str(), self.option_value(k, v)))
            .collect()
    }

    /// Writes `value`'s `Debug` output (alternate form when asked) with secrets hidden: the way a
    /// configuration's `Debug` is implemented, so that a secret in any field stays out.
    pub fn debug(&self, f: &mut fmt::Formatter<'_>, value: &dyn fmt::Debug) -> fmt::Result {
        let text = if f.alternate() {
            format!("{value:#?}")
        } else {
            format!("{value:?}")
        };
        f.write_str(&self.redact(&text))
    }
}

/// Every `scheme://user:password@` in a text, with the password hidden.
fn redact_urls_in(text: &str) -> String {
    if !text.contains("://") {
        return text.to_owned();
    }
    text.split_inclusive(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ',' | '(' | ')'))
        .map(|piece| match piece.find("://") {
            Some(_) => redact_url(piece),
            None => piece.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_hold_secrets() {
        for name in [
            "EVENT_BUS_KAFKA_API_SECRET",
            "EVENT_BUS_KAFKA_SCHEMA_REGISTRY_API_SECRET",
            "EVENT_BUS_PULSAR_AUTH_TOKEN",
            "EVENT_BUS_KAFKA_SASL_USERNAME",
            "EVENT_BUS_KAFKA_SSL_KEY_PEM",
            "EVENT_BUS_KAFKA_SSL_CERTIFICATE_PEM",
            "EVENT_BUS_KAFKA_SSL_KEY_PASSWORD",
            "sasl.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "EVENT_BUS_PULSAR_OAUTH2_CREDENTIALS_URL",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in [
            "EVENT_BUS_REDIS_STREAM_MAX_LEN",
            "bootstrap.servers",
            "EVENT_BUS_URL",
        ] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("redis://user:pw@h"), "redis://user:***@h");
        assert_eq!(redact_url("pulsar://token@h"), "pulsar://***@h");
        assert_eq!(redact_url("kafka://a:1,b:2"), "kafka://a:1,b:2");
    }

    /// Issue 15 (fuzzing, `fuzz/regressions/config_url/`): a URL password with a quote showed
    /// in a configuration's `Debug`, which escapes the quote and so hid the password from both
    /// the redaction by value and the one by place in the URL.
    #[test]
    fn a_secret_that_debug_escapes_is_hidden_escaped_too() {
        let url = "rediss://:pa\"ss\\word@h:6380/2";
        let config = crate::BusConfig::from_vars([("EVENT_BUS_URL", url)]).unwrap();
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("ss\\\\word") && !debug.contains("pa\\\""),
            "{debug}"
        );
        let secret = "tab\there";
        let r = Redactor::new().secret(secret);
        assert_eq!(r.redact(&format!("{secret:?}")), "\"***\"");
        assert_eq!(r.redact(secret), "***");
    }

    #[test]
    fn a_secret_is_hidden_wherever_its_value_appears() {
        let r = Redactor::new()
            .options([
                ("EVENT_BUS_KAFKA_API_SECRET", "hunter22"),
                ("EVENT_BUS_X", "1"),
            ])
            .url("redis://u:s3cr3t-pw@h:6379");
        let text = "connect to redis://u:other@h failed; header hunter22, pw s3cr3t-pw, x=1";
        assert_eq!(
            r.redact(text),
            "connect to redis://u:***@h failed; header ***, pw ***, x=1"
        );
        assert_eq!(
            r.option_value("EVENT_BUS_KAFKA_API_SECRET", "hunter22"),
            "***"
        );
        assert_eq!(r.option_value("EVENT_BUS_X", "1"), "1");
    }
}
