//! Parsing one key's value, from a TOML value or from text (env and flags).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::keys::{EnvUnit, Kind};

/// A parsed value.
#[derive(Clone, PartialEq)]
pub enum Value {
    Duration(Duration),
    Count(u64),
    Text(String),
    Secret(Secret),
    Signals(Vec<Signal>),
    Argv(Vec<String>),
    Listen(SocketAddr),
    Mark(crate::memory::Mark),
}

/// A secret string. Its `Debug` and `Display` never show it, so it cannot
/// reach a log line, an error or a panic message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the one place that must send it (Redis AUTH,
    /// the child's environment).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl Value {
    /// The value as TOML text, with secrets redacted: a secret key's value
    /// whole, and in text and commands whatever looks like a secret (a URL's
    /// password in `redis.address`, a literal `--redis-password=` in
    /// `ray.start-command`).
    pub fn render(&self) -> String {
        match self {
            Value::Duration(d) => quote(&humantime::format_duration(*d).to_string()),
            Value::Count(n) => n.to_string(),
            Value::Text(s) => quote(&crate::redact::line(s)),
            Value::Secret(_) => quote("<redacted>"),
            Value::Signals(v) => list(v.iter().map(|s| s.as_str())),
            Value::Argv(v) => list(crate::redact::argv(v).iter().map(String::as_str)),
            Value::Listen(a) => quote(&a.to_string()),
            Value::Mark(m) => quote(&m.render()),
        }
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let parts: Vec<String> = items.map(quote).collect();
    format!("[{}]", parts.join(", "))
}

/// Parses the text form (env var, `--set`, and the registry's defaults).
pub fn parse_text(kind: Kind, unit: EnvUnit, text: &str) -> Result<Value, String> {
    match (kind, unit) {
        (Kind::Duration, EnvUnit::Seconds) => {
            let secs: u64 = text.trim().parse().map_err(|_| {
                format!("{}: expected a whole number of seconds", shown(kind, text))
            })?;
            bounded(text, Duration::from_secs(secs))
        }
        (Kind::Duration, EnvUnit::Milliseconds) => {
            let ms: u64 = text.trim().parse().map_err(|_| {
                format!(
                    "{}: expected a whole number of milliseconds",
                    shown(kind, text)
                )
            })?;
            bounded(text, Duration::from_millis(ms))
        }
        (Kind::Duration, EnvUnit::Plain) => parse_duration(text),
        (Kind::Count { min, max }, _) => {
            let n: u64 = text
                .trim()
                .parse()
                .map_err(|_| format!("{}: expected a whole number", shown(kind, text)))?;
            count(n, min, max)
        }
        (Kind::Text, _) => Ok(Value::Text(text.to_string())),
        (Kind::Secret, _) => Ok(Value::Secret(Secret::new(text))),
        (Kind::Choice(words), _) => choice(text, words),
        (Kind::Signals, _) => {
            let names: Vec<&str> = text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            signals(&names)
        }
        (Kind::Argv, _) => {
            let argv = split_command(text)?;
            if argv.is_empty() {
                return Err("empty command".to_string());
            }
            Ok(Value::Argv(argv))
        }
        (Kind::Listen, _) => listen(text),
        (Kind::Mark, _) => crate::memory::Mark::parse(text).map(Value::Mark),
    }
}

/// Parses a value from a TOML file.
pub fn parse_toml(kind: Kind, v: &toml::Value) -> Result<Value, String> {
    match (kind, v) {
        (Kind::Count { min, max }, toml::Value::Integer(n)) => {
            let n = u64::try_from(*n).map_err(|_| format!("{n}: expected a number >= {min}"))?;
            count(n, min, max)
        }
        (Kind::Signals, toml::Value::Array(items)) => {
            let mut names = Vec::new();
            for item in items {
                match item {
                    toml::Value::String(s) => names.push(s.as_str()),
                    other => {
                        return Err(format!(
                            "{other}: expected a signal name such as \"SIGTERM\""
                        ))
                    }
                }
            }
            signals(&names)
        }
        (Kind::Argv, toml::Value::Array(items)) => {
            let mut argv = Vec::new();
            for item in items {
                match item {
                    toml::Value::String(s) => argv.push(s.clone()),
                    other => return Err(format!("{other}: expected a string in the command list")),
                }
            }
            if argv.is_empty() {
                return Err("empty command".to_string());
            }
            Ok(Value::Argv(argv))
        }
        (Kind::Secret, toml::Value::String(s)) => Ok(Value::Secret(Secret::new(s.clone()))),
        (_, toml::Value::String(s)) => parse_text(kind, EnvUnit::Plain, s),
        (Kind::Secret, _) => Err("expected a string".to_string()),
        (_, other) => Err(format!("{}: expected {}", other, expected(kind))),
    }
}

/// What a kind expects, for error messages.
pub fn expected(kind: Kind) -> String {
    match kind {
        Kind::Duration => "a duration such as \"25s\" or \"1m30s\"".into(),
        Kind::Count { min, max } => format!("a whole number from {min} to {max}"),
        Kind::Text | Kind::Secret => "a string".into(),
        Kind::Choice(words) => format!("one of {}", words.join(", ")),
        Kind::Signals => "a list of signal names such as [\"SIGTERM\", \"SIGHUP\"]".into(),
        Kind::Argv => "a command, as a list of strings or one string".into(),
        Kind::Listen => "an address such as \"0.0.0.0:8099\"".into(),
        Kind::Mark => "\"off\", a share such as \"50%\", or a size such as \"2GiB\"".into(),
    }
}

/// The bad value as an error may show it: never a secret's.
fn shown(kind: Kind, text: &str) -> String {
    if kind == Kind::Secret {
        "<redacted>".into()
    } else {
        format!("{text:?}")
    }
}

/// The longest any duration key takes. Anything longer is a mistake (and
/// "584542046090years" would overflow a deadline), so it is an error naming
/// the key, never a silent cap.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

fn parse_duration(text: &str) -> Result<Value, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?}: {e}; expected {}", expected(Kind::Duration)))?;
    bounded(text, d)
}

fn bounded(text: &str, d: Duration) -> Result<Value, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "{text:?}: longer than 7 days, the most any duration key takes"
        ));
    }
    Ok(Value::Duration(d))
}

fn count(n: u64, min: u64, max: u64) -> Result<Value, String> {
    if n < min || n > max {
        return Err(format!("{n}: expected a whole number from {min} to {max}"));
    }
    Ok(Value::Count(n))
}

fn choice(text: &str, words: &[&str]) -> Result<Value, String> {
    let t = text.trim();
    if words.contains(&t) {
        Ok(Value::Text(t.to_string()))
    } else {
        Err(format!("{text:?}: expected one of {}", words.join(", ")))
    }
}

fn signals(names: &[&str]) -> Result<Value, String> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for name in names {
        match parse_signal(name) {
            Ok(s) if !out.contains(&s) => out.push(s),
            Ok(_) => {}
            Err(e) => bad.push(e),
        }
    }
    if bad.is_empty() {
        Ok(Value::Signals(out))
    } else {
        Err(bad.join("; "))
    }
}

/// A signal by name, `SIGTERM` or `TERM`, any case. Signals that cannot be
/// caught, or that the init handles itself (SIGCHLD), are refused.
pub fn parse_signal(name: &str) -> Result<Signal, String> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    let sig: Signal = full
        .parse()
        .map_err(|_| format!("{name:?}: not a signal name"))?;
    match sig {
        Signal::SIGKILL | Signal::SIGSTOP => Err(format!(
            "{name:?}: cannot be caught, so cannot be forwarded"
        )),
        Signal::SIGCHLD => Err(format!(
            "{name:?}: the init reaps on SIGCHLD and does not forward it"
        )),
        s => Ok(s),
    }
}

fn listen(text: &str) -> Result<Value, String> {
    text.trim()
        .parse::<SocketAddr>()
        .map(Value::Listen)
        .map_err(|_| format!("{text:?}: expected {}", expected(Kind::Listen)))
}

/// Splits a command line the way a POSIX shell splits words: whitespace
/// separates, single quotes are literal, double quotes allow `\"` and `\\`,
/// a backslash outside quotes escapes the next character. Nothing is
/// expanded.
pub fn split_command(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("trailing backslash".into()),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_command_follows_shell_quoting() {
        assert_eq!(split_command("ray stop").unwrap(), vec!["ray", "stop"]);
        assert_eq!(
            split_command(r#"a 'b c' "d \"e\"" f\ g"#).unwrap(),
            vec!["a", "b c", "d \"e\"", "f g"]
        );
        assert_eq!(split_command("  ").unwrap(), Vec::<String>::new());
        assert!(split_command("'open").is_err());
        assert!(split_command("\"open").is_err());
    }

    #[test]
    fn signals_accept_short_and_long_names() {
        let v = parse_text(Kind::Signals, EnvUnit::Plain, "term, SIGHUP,usr1").unwrap();
        assert_eq!(
            v,
            Value::Signals(vec![Signal::SIGTERM, Signal::SIGHUP, Signal::SIGUSR1])
        );
        assert!(parse_signal("SIGKILL").is_err());
        assert!(parse_signal("SIGCHLD").is_err());
        assert!(parse_signal("NOPE").unwrap_err().contains("NOPE"));
    }

    #[test]
    fn durations_in_both_spellings() {
        assert_eq!(
            parse_text(Kind::Duration, EnvUnit::Plain, "1m30s").unwrap(),
            Value::Duration(Duration::from_secs(90))
        );
        assert_eq!(
            parse_text(Kind::Duration, EnvUnit::Seconds, "600").unwrap(),
            Value::Duration(Duration::from_secs(600))
        );
        assert!(parse_text(Kind::Duration, EnvUnit::Seconds, "10s").is_err());
        assert_eq!(
            parse_text(Kind::Duration, EnvUnit::Milliseconds, "250").unwrap(),
            Value::Duration(Duration::from_millis(250))
        );
        let e = parse_text(Kind::Duration, EnvUnit::Milliseconds, "100ms").unwrap_err();
        assert!(e.contains("whole number of milliseconds"), "{e}");
        let e = parse_text(Kind::Duration, EnvUnit::Plain, "25").unwrap_err();
        assert!(e.contains("\"25\""), "{e}");
    }

    #[test]
    fn secrets_never_render() {
        let v = parse_text(Kind::Secret, EnvUnit::Plain, "hunter2").unwrap();
        assert!(!format!("{v:?} {}", v.render()).contains("hunter2"));
        for text in [
            "redis://:Ab/hunter2==@127.0.0.1:1",
            "ray start --head --redis-password=hunter2",
            "ray start --head --redis-password  hunter2",
        ] {
            let v = parse_text(Kind::Text, EnvUnit::Plain, text).unwrap();
            assert!(
                !format!("{v:?} {}", v.render()).contains("hunter2"),
                "{text}"
            );
            let v = parse_text(Kind::Argv, EnvUnit::Plain, text).unwrap();
            assert!(
                !format!("{v:?} {}", v.render()).contains("hunter2"),
                "{text}"
            );
        }
        let e = parse_toml(Kind::Secret, &toml::Value::Integer(5)).unwrap_err();
        assert!(!e.contains('5'), "{e}");
    }

    #[test]
    fn counts_are_bounded() {
        let k = Kind::Count { min: 1, max: 10 };
        assert!(parse_text(k, EnvUnit::Plain, "0").is_err());
        assert!(parse_toml(k, &toml::Value::Integer(-3)).is_err());
        assert_eq!(
            parse_toml(k, &toml::Value::Integer(3)).unwrap(),
            Value::Count(3)
        );
        assert_eq!(
            parse_toml(k, &toml::Value::String("4".into())).unwrap(),
            Value::Count(4)
        );
    }
}
