//! Redaction of secrets in command lines, free text and addresses.
//!
//! gcs_server's argv carries `--redis_password=<password>` in clear, and
//! `ray start` takes `--redis-password`. Anything that logs or shows an argv
//! or a child's output goes through [`argv`] or [`line`] first.
//!
//! The redactor errs on the side of hiding: a value that might be a secret is
//! hidden, even when that hides a harmless one. It never recurses: a line is
//! cut into words once (on every `char::is_whitespace`, so `\r`, a
//! non-breaking space or U+2028 cut words as a space does), and each word is
//! looked at once, with a small state carried from word to word ("hide the
//! next word", "hide until this quote closes").

/// Marks an option name as secret when it contains one of these words
/// (`requirepass` and `masterauth` are Redis's own password settings,
/// `REDISCLI_AUTH` redis-cli's password variable).
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "requirepass",
    "masterauth",
    "rediscli_auth",
];

/// Option names that are secret only as a whole: redis-cli's `--pass`, and
/// its `-a` (only on a redis-cli command line: `ls -a dir` is no secret).
const SECRET_OPTIONS: &[&str] = &["pass"];

pub const REDACTED: &str = "<redacted>";

fn has_secret_word(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| lower.contains(w))
}

/// Characters that may wrap a word in a shell trace, a log or JSON:
/// `'--redis-password=x'`, `"REDIS_PASSWORD=x"`, `{"redis_password": "x"}`.
const WRAPPERS: &[char] = &['\'', '"', '`', '(', '[', '{', ','];

/// Quote characters whose opening in a hidden value hides every word until
/// the quote closes: `--redis-password='two words'`.
const QUOTES: &[char] = &['\'', '"', '`'];

/// What the words to come need, from the words seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hide {
    Nothing,
    /// The next word is a secret option's value.
    NextWord,
    /// A hidden value opened this quote: hide up to the word that closes it.
    UntilQuote(char),
}

/// The redactor's state across the words of one line or one argv.
struct Redactor {
    hide: Hide,
    /// A `redis-cli` word was seen: its `-a` takes the password.
    redis_cli: bool,
}

impl Redactor {
    fn new() -> Self {
        Redactor {
            hide: Hide::Nothing,
            redis_cli: false,
        }
    }

    /// Free text: words cut at whitespace, the separators kept as they were.
    fn text(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut start = None;
        for (i, c) in text.char_indices() {
            if c.is_whitespace() {
                if let Some(s) = start.take() {
                    out.push_str(&self.word(&text[s..i]));
                }
                out.push(c);
            } else if start.is_none() {
                start = Some(i);
            }
        }
        if let Some(s) = start {
            out.push_str(&self.word(&text[s..]));
        }
        out
    }

    /// One word, holding no whitespace.
    fn word(&mut self, w: &str) -> String {
        match self.hide {
            Hide::NextWord => {
                self.hide = self.after_hidden(w);
                return REDACTED.to_string();
            }
            Hide::UntilQuote(q) => {
                if w.contains(q) {
                    self.hide = Hide::Nothing;
                }
                return REDACTED.to_string();
            }
            Hide::Nothing => {}
        }
        // URLs first: a URL's password may itself hold a secret word and a
        // `=` (`redis://:Ab/secret==@h`), which must not stop at the `=`.
        let w = &url(w);
        let bare = w.trim_start_matches(WRAPPERS);
        let prefix = &w[..w.len() - bare.len()];
        // `name=value` or `"name": value`: a separator after a secret word
        // hides everything after it. One pass over the word, however long.
        let lower = bare.to_ascii_lowercase();
        let secret_end = SECRET_WORDS
            .iter()
            .filter_map(|s| lower.find(s).map(|p| p + s.len()))
            .min();
        if let Some(from) = secret_end {
            let separator = bare[from..]
                .char_indices()
                .map(|(i, c)| (from + i, c))
                // `password://`: a URL's scheme, not a separator.
                .find(|&(i, c)| c == '=' || (c == ':' && !bare[i + 1..].starts_with("//")));
            if let Some((i, _)) = separator {
                let value_bare = bare[i + 1..].trim_matches(QUOTES);
                self.hide = if value_bare.is_empty() || value_bare == "," {
                    // `--redis-password= x`, `"redis_password": "x"`.
                    Hide::NextWord
                } else {
                    // A quote the value opens, else one the word opens.
                    let value = &bare[i + 1..];
                    value
                        .starts_with(QUOTES)
                        .then(|| open_quote(value))
                        .flatten()
                        .or_else(|| open_quote(w))
                        .map_or(Hide::Nothing, Hide::UntilQuote)
                };
                return format!("{prefix}{}{REDACTED}", &bare[..=i]);
            }
        }
        if self.takes_a_secret(w) {
            self.hide = Hide::NextWord;
        }
        let name = bare.trim_end_matches(QUOTES);
        if std::path::Path::new(name)
            .file_name()
            .is_some_and(|n| n == "redis-cli" || n == "redis-server")
        {
            self.redis_cli = true;
        }
        w.clone()
    }

    /// Whether `w` is an option or setting whose value is the next word:
    /// `--redis-password`, `requirepass`, redis-cli's `-a`.
    fn takes_a_secret(&self, w: &str) -> bool {
        let lower = w
            .trim_matches(WRAPPERS)
            .trim_end_matches(QUOTES)
            .to_ascii_lowercase();
        let option = lower.trim_start_matches('-');
        (lower.starts_with('-') && (has_secret_word(option) || SECRET_OPTIONS.contains(&option)))
            || lower == "requirepass"
            || lower == "masterauth"
            || (self.redis_cli && lower == "-a")
    }

    /// What a hidden value leaves to hide: the rest of a quote it opens, or
    /// the next word when it is itself a secret option (`--token
    /// --redis-password x`: which one lacks its value is anyone's guess).
    fn after_hidden(&self, w: &str) -> Hide {
        if self.takes_a_secret(w) {
            return Hide::NextWord;
        }
        open_quote(w).map_or(Hide::Nothing, Hide::UntilQuote)
    }

    /// One argument of an argv: a value of its own, even when empty, and a
    /// whole command when it holds whitespace (the raylet's
    /// `--python_worker_command=... --redis-password=x`).
    fn arg(&mut self, a: &str) -> String {
        if self.hide == Hide::NextWord {
            self.hide = self.after_hidden(a);
            return REDACTED.to_string();
        }
        if a.is_empty() {
            return String::new();
        }
        // One argument `--x-password=VALUE` (or `X_PASSWORD=VALUE`): all of
        // VALUE is the secret, spaces and all (an unsplit `$REDIS_PASSWORD`).
        // (Without a space in it, the word-by-word pass below hides it.)
        if let Some((name, value)) = a.split_once('=') {
            if value.contains(char::is_whitespace)
                && !name.is_empty()
                && !name.contains(char::is_whitespace)
                && has_secret_word(name)
            {
                self.hide = open_quote(value).map_or(Hide::Nothing, Hide::UntilQuote);
                return format!("{name}={REDACTED}");
            }
        }
        // A quote left open by a hidden value keeps hiding into the next
        // arguments: an argv may be a quoted line cut at spaces.
        self.text(a)
    }
}

/// The quote that `w` leaves open (an odd count of it), if any.
fn open_quote(w: &str) -> Option<char> {
    QUOTES
        .iter()
        .copied()
        .find(|q| w.matches(*q).count() % 2 == 1)
}

/// The argv with every secret value replaced: `--x-password=V`,
/// `--x-password V`, `X_PASSWORD=V` (an environment assignment), each also
/// when quoted, `requirepass V`, redis-cli's `-a V`, and the password of any
/// `scheme://user:pass@host` URL.
pub fn argv<S: AsRef<str>>(args: &[S]) -> Vec<String> {
    let mut r = Redactor::new();
    args.iter().map(|a| r.arg(a.as_ref())).collect()
}

/// The argv as one line, redacted, for a log.
pub fn command_line<S: AsRef<str>>(args: &[S]) -> String {
    argv(args).join(" ")
}

/// A line of free text (a program's output) with secret options and URL
/// passwords redacted, word by word. Quotes around a value do not save it,
/// nor do extra spaces before it.
pub fn line(text: &str) -> String {
    Redactor::new().text(text)
}

/// Text with the password of every `scheme://user:pass@host` replaced.
///
/// A URL runs to the next whitespace or the next `scheme://` (a comma list
/// of URLs), and its userinfo to the last `@` in it: a password may hold
/// `/`, `?` or `#` (rayhead's own parser takes the last `@` too), so a path
/// holding an `@` is hidden as well, which is the safe mistake.
pub fn url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let after = scheme_end + 3;
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        // To the next whitespace, or back to the start of the next URL's
        // scheme: one pass, however many URLs.
        let end = rest
            .char_indices()
            .find(|&(i, c)| c.is_whitespace() || rest[i..].starts_with("://"))
            .map_or(rest.len(), |(i, c)| {
                if c.is_whitespace() {
                    return i;
                }
                rest[..i]
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
                    .map_or(0, |j| j + 1)
            });
        let segment = &rest[..end];
        if let Some(at) = segment.rfind('@') {
            match segment[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                // `redis://secret@host`: Redis treats a lone userinfo as
                // the password.
                _ => out.push_str(REDACTED),
            }
            out.push_str(&segment[at..]);
        } else {
            out.push_str(segment);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod review_tests {
    use super::*;

    #[test]
    fn a_value_that_starts_with_two_slashes_is_hidden() {
        for text in [
            "ray start --head --redis-password=//hunter2",
            "REDIS_PASSWORD=//hunter2",
            "password=//hunter2 next",
        ] {
            let out = line(text);
            assert!(!out.contains("hunter2"), "{text}: {out}");
        }
        // A URL's scheme after a secret word is still a URL.
        assert!(!line("token:redis://:hunter2@h:1").contains("hunter2"));
    }

    #[test]
    fn an_argument_with_a_spaced_value_is_hidden_whole() {
        let out = argv(&[
            "ray",
            "start",
            "--redis-password=pw with spaces hunter2",
            "--head",
        ]);
        assert_eq!(out[2], "--redis-password=<redacted>");
        assert_eq!(out[3], "--head");
        let out = argv(&["gcs_server", "--redis_password=a b", "--port=1"]);
        assert_eq!(
            out,
            ["gcs_server", "--redis_password=<redacted>", "--port=1"]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_options() {
        let got = argv(&[
            "/x/gcs_server",
            "--redis_password=hunter2",
            "--redis-password",
            "hunter2",
            "--gcs_server_port=6379",
            "--Token=abc",
        ]);
        let line = got.join(" ");
        assert!(!line.contains("hunter2") && !line.contains("abc"), "{line}");
        assert!(line.contains("--redis_password=<redacted>"));
        assert!(line.contains("--gcs_server_port=6379"));
    }

    /// The raylet's argv carries whole commands as single arguments, with
    /// the password inside.
    #[test]
    fn redacts_commands_inside_arguments() {
        let got = command_line(&[
            "/x/raylet",
            "--python_worker_command=/x/python3 w.py --redis-address=h:1 --redis-password=hunter2 --x=1",
            "--java_worker_command=java -Dray.redis.password=hunter2 -Dray.node-ip=1",
            "--node_manager_port=0",
        ]);
        assert!(!got.contains("hunter2"), "{got}");
        assert!(got.contains("--redis-password=<redacted>"), "{got}");
        assert!(got.contains("-Dray.redis.password=<redacted>"), "{got}");
        assert!(
            got.contains("--python_worker_command=/x/python3 w.py"),
            "{got}"
        );
        assert!(got.contains("--node_manager_port=0"), "{got}");
    }

    #[test]
    fn redacts_lines() {
        let l = line("  ray start --address='h:1' --redis-password='hunter2' ok");
        assert!(!l.contains("hunter2"), "{l}");
        assert!(l.ends_with(" ok"), "{l}");
        assert_eq!(line("plain  text"), "plain  text");
        // A URL password with no secret word anywhere on the line.
        assert_eq!(
            line("connecting to redis://u:hunter2@h:1 now"),
            "connecting to redis://u:<redacted>@h:1 now"
        );
        assert_eq!(
            line("at rediss://hunter2@h:1"),
            "at rediss://<redacted>@h:1"
        );
        // Quoted whole, as `set -x` prints it; and environment assignments.
        assert_eq!(
            line("+ ray start '--redis-password=hunter2'"),
            "+ ray start '--redis-password=<redacted>"
        );
        assert_eq!(
            line("env REDIS_PASSWORD=hunter2 \"RAY_TOKEN=abc\" x"),
            "env REDIS_PASSWORD=<redacted> \"RAY_TOKEN=<redacted> x"
        );
        assert_eq!(line("'--token' 'abc' ok"), "'--token' <redacted> ok");
        // A non-secret assignment or option is left alone.
        assert_eq!(
            line("port=6379 --port=1 password"),
            "port=6379 --port=1 password"
        );
    }

    /// Each of these leaked before: the secret is `hunter2` or `s3cr3t`.
    #[test]
    fn no_form_leaks() {
        for text in [
            "--redis-password  hunter2",
            "--redis-password\t\thunter2",
            "--redis-password \u{a0}hunter2",
            "--redis-password\r\nhunter2",
            "--redis-password='hunter2 s3cr3t' next",
            "'--redis-password=hunter2 s3cr3t' next",
            "--redis-password \"hunter2 s3cr3t\" next",
            r#"{"redis_password": "hunter2 s3cr3t", "port": 1}"#,
            r#"{"redis_password":"hunter2"}"#,
            "{'redis_password': 'hunter2'}",
            "redis_password: hunter2",
            "redis-server --port 1 --requirepass hunter2 --masterauth s3cr3t",
            "redis-server /etc/r.conf requirepass hunter2",
            "/usr/bin/redis-cli -h h -a hunter2 ping",
            "redis-cli --pass hunter2",
            "env REDISCLI_AUTH=hunter2 redis-cli ping",
            "redis://:hunter2@a:1,redis://:s3cr3t@b:2",
            "a:1,redis://:hunter2@b:2",
            "redis://:hunter2/s3cr3t==@127.0.0.1",
            "redis://u:hunter2?s3cr3t#x@h:1",
            "--x=--redis-password=hunter2",
            "true; curl https://u:hunter2@x/y\r",
        ] {
            let got = line(text);
            assert!(
                !got.contains("hunter2") && !got.contains("s3cr3t"),
                "{text:?} -> {got:?}"
            );
            let words: Vec<&str> = text.split_whitespace().collect();
            let got = command_line(&words);
            assert!(
                !got.contains("hunter2") && !got.contains("s3cr3t"),
                "{words:?} -> {got:?}"
            );
        }
        // An empty argument is a value: the password is empty, the next
        // argument is not hidden.
        assert_eq!(
            argv(&["--redis-password", "", "--port=1"]),
            vec!["--redis-password", REDACTED, "--port=1"]
        );
        // `-a` is a secret only on a redis-cli command line.
        assert_eq!(line("ls -a dir"), "ls -a dir");
    }

    /// What made PID 1 overflow its stack: a word that `line` did not cut
    /// but `argv` saw whitespace in, and handed back to `line`.
    #[test]
    fn whitespace_of_every_kind_terminates() {
        for ws in ['\r', '\u{a0}', '\u{2028}', '\u{85}', '\u{3000}', '\u{b}'] {
            let a = format!("true; curl https://x/y{ws}");
            assert_eq!(command_line(&["sh", "-c", &a]), format!("sh -c {a}"));
            let t = format!("--token{ws}abc{ws}x");
            assert_eq!(line(&t), format!("--token{ws}{REDACTED}{ws}x"));
        }
    }

    /// Long lines of what the redactor looks for: each word is looked at
    /// in one pass, so this ends (a quadratic scan would not, in practice).
    #[test]
    fn huge_inputs_end() {
        for unit in ["://", "password:=", "a@", "--token ", "'", "redis://:p@h,"] {
            let text = unit.repeat(200_000 / unit.len());
            let _ = line(&text);
            let _ = url(&text);
        }
    }

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(url("redis://u:pw@h:1/0"), "redis://u:<redacted>@h:1/0");
        assert_eq!(url("rediss://pw@h:1"), "rediss://<redacted>@h:1");
        assert_eq!(url("h:6379"), "h:6379");
        assert_eq!(url("redis://h:6379/a"), "redis://h:6379/a");
        // A path with an `@` could be a password with a `/`: hidden.
        assert_eq!(url("redis://h:6379/a@b"), "redis://h:<redacted>@b");
        assert_eq!(
            url("redis://:a@h:1,rediss://u:b@h:2 x"),
            "redis://:<redacted>@h:1,rediss://u:<redacted>@h:2 x"
        );
        assert_eq!(
            command_line(&["x", "redis://a:b@c"]),
            "x redis://a:<redacted>@c"
        );
    }
}
