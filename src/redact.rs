//! Redaction of secrets in command lines and addresses.
//!
//! gcs_server's argv carries `--redis_password=<password>` in clear, and
//! `ray start` takes `--redis-password`. Anything that logs or shows an argv
//! goes through [`argv`] first.

/// Marks an option name as secret when it contains one of these words.
const SECRET_WORDS: &[&str] = &["password", "passwd", "secret", "token", "credential"];

pub const REDACTED: &str = "<redacted>";

fn is_secret_option(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| lower.contains(w))
}

/// Characters that may wrap a word in a shell trace or a log:
/// `'--redis-password=x'`, `"REDIS_PASSWORD=x"`.
const WRAPPERS: &[char] = &['\'', '"', '`', '(', '[', '{'];

/// The argv with every secret value replaced: `--x-password=V`,
/// `--x-password V`, `X_PASSWORD=V` (an environment assignment), each also
/// when quoted, and the password of any `scheme://user:pass@host` URL.
pub fn argv<S: AsRef<str>>(args: &[S]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        let a = a.as_ref();
        if hide_next {
            out.push(REDACTED.to_string());
            hide_next = false;
            continue;
        }
        let bare = a.trim_start_matches(WRAPPERS);
        let prefix = &a[..a.len() - bare.len()];
        if let Some((name, value)) = bare.split_once('=') {
            if is_secret_option(name) {
                out.push(format!("{prefix}{name}={REDACTED}"));
                continue;
            }
            // A whole command as one argument: the raylet's
            // `--python_worker_command=... --redis-password=x` and
            // `--java_worker_command=... -Dray.redis.password=x`.
            if value.contains(char::is_whitespace) {
                out.push(format!("{prefix}{name}={}", line(value)));
                continue;
            }
        } else if bare.starts_with('-') && is_secret_option(bare) {
            hide_next = true;
        }
        if a.contains(char::is_whitespace) {
            out.push(line(a));
            continue;
        }
        out.push(url(a));
    }
    out
}

/// The argv as one line, redacted, for a log.
pub fn command_line<S: AsRef<str>>(args: &[S]) -> String {
    argv(args).join(" ")
}

/// A line of free text (a program's output) with secret options and URL
/// passwords redacted, word by word. Quotes around a value do not save it.
pub fn line(text: &str) -> String {
    let words: Vec<&str> = text.split([' ', '\t', '\n']).collect();
    let lowered = text.to_ascii_lowercase();
    if !SECRET_WORDS.iter().any(|w| lowered.contains(w)) && !text.contains("://") {
        return text.to_string();
    }
    argv(&words).join(" ")
}

/// Text with the password of any `scheme://user:pass@host` replaced.
pub fn url(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &text[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return text.to_string();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        // `redis://secret@host`: Redis treats a lone userinfo as the password.
        None => REDACTED.to_string(),
    };
    format!("{}{}{}", &text[..rest_start], user, &rest[at..])
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

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(url("redis://u:pw@h:1/0"), "redis://u:<redacted>@h:1/0");
        assert_eq!(url("rediss://pw@h:1"), "rediss://<redacted>@h:1");
        assert_eq!(url("h:6379"), "h:6379");
        assert_eq!(url("redis://h:6379/a@b"), "redis://h:6379/a@b");
        assert_eq!(
            command_line(&["x", "redis://a:b@c"]),
            "x redis://a:<redacted>@c"
        );
    }
}
