//! KubeRay's start command read as bash reads one simple command.
//!
//! KubeRay runs `KUBERAY_GEN_RAY_START_CMD` through bash, so bash decides
//! what each argument is. rayhead runs no shell: it reads the string in one
//! pass that tracks quoting the way bash does (single quotes literal; double
//! quotes expand `$VAR`/`${VAR}` and honour `\$ \" \\ \``; a backslash
//! outside quotes escapes the next character; an unset variable expands to
//! nothing, and an unquoted word that expands to nothing is no word at
//! all). What bash would do and rayhead does not (command substitution,
//! globs, operators, `${VAR:-x}`, ...) is an error naming the construct:
//! never a silent change of the command.
//!
//! One deliberate difference: bash splits the value of an unquoted
//! `$VAR` at spaces (and globs it); rayhead keeps it one argument, so that
//! KubeRay's unquoted `--redis-password=$REDIS_PASSWORD` survives a
//! password with a space or a `*` in it.
//!
//! Errors never quote the command: it may hold a password in clear.

use crate::config::Env;

/// The command's words, expanded, and the unset variables it named (for a
/// warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Words {
    pub argv: Vec<String>,
    pub unset: Vec<String>,
}

/// Whether a `$` sits inside double quotes, which changes what follows it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    Bare,
    Double,
}

/// Splits and expands `text` from `env`.
pub fn words(text: &str, env: &dyn Env) -> Result<Words, String> {
    let chars = join_continued_lines(text);
    let mut out = Words {
        argv: Vec::new(),
        unset: Vec::new(),
    };
    let mut cur = String::new();
    // A word has started (even if it may expand to nothing).
    let mut in_word = false;
    // The word holds quotes, so it is kept even when empty (`""`).
    let mut quoted = false;
    let mut i = 0;
    let at = |i: usize| format!("at character {}", i + 1);
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' => {
                if in_word && (quoted || !cur.is_empty()) {
                    out.argv.push(std::mem::take(&mut cur));
                }
                cur.clear();
                in_word = false;
                quoted = false;
                if c == '\n' {
                    // The end, unless a second command follows.
                    if chars[i..].iter().any(|c| !matches!(c, ' ' | '\t' | '\n')) {
                        return Err(format!(
                            "a newline {} starts a second command; rayhead runs one `ray start`",
                            at(i)
                        ));
                    }
                    return Ok(out);
                }
                i += 1;
            }
            '\'' => {
                in_word = true;
                quoted = true;
                let close = chars[i + 1..]
                    .iter()
                    .position(|c| *c == '\'')
                    .ok_or_else(|| format!("unterminated single quote {}", at(i)))?;
                cur.extend(&chars[i + 1..i + 1 + close]);
                i += close + 2;
            }
            '"' => {
                in_word = true;
                quoted = true;
                let open = i;
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated double quote {}", at(open))),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some(e @ ('$' | '"' | '\\' | '`')) => cur.push(*e),
                                Some(e) => {
                                    cur.push('\\');
                                    cur.push(*e);
                                }
                                None => {
                                    return Err(format!("unterminated double quote {}", at(open)))
                                }
                            }
                            i += 2;
                        }
                        Some('$') => {
                            i = expand(&chars, i, Quoting::Double, env, &mut cur, &mut out)?
                        }
                        Some('`') => return Err(unsupported("`...` (command substitution)", i)),
                        Some(c) => {
                            cur.push(*c);
                            i += 1;
                        }
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.get(i + 1) {
                    Some(e) => cur.push(*e),
                    // bash keeps a trailing backslash.
                    None => cur.push('\\'),
                }
                i += 2;
            }
            '$' => {
                in_word = true;
                i = expand(&chars, i, Quoting::Bare, env, &mut cur, &mut out)?;
            }
            '\0' => return Err(format!("a NUL character {}", at(i))),
            _ => {
                if let Some(what) = bare_construct(c, in_word) {
                    return Err(unsupported(what, i));
                }
                in_word = true;
                cur.push(c);
                i += 1;
            }
        }
    }
    if in_word && (quoted || !cur.is_empty()) {
        out.argv.push(cur);
    }
    Ok(out)
}

/// The text with every line continuation (a backslash that is not itself
/// quoted, before a newline, outside single quotes) removed. bash removes
/// them as it reads, before it sees words or names, so `$A\<newline>B` is
/// `$AB`. Error positions count in the joined text.
fn join_continued_lines(text: &str) -> Vec<char> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::with_capacity(chars.len());
    let (mut single, mut double) = (false, false);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if single {
            single = c != '\'';
            out.push(c);
            continue;
        }
        match c {
            '\\' => match chars.get(i) {
                Some('\n') => i += 1,
                // An escaped character: never a quote or a continuation.
                Some(&next) => {
                    out.extend([c, next]);
                    i += 1;
                }
                None => out.push(c),
            },
            '\'' if !double => {
                single = true;
                out.push(c);
            }
            '"' => {
                double = !double;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// What an unquoted character starts in bash, when rayhead does not do it.
fn bare_construct(c: char, in_word: bool) -> Option<&'static str> {
    Some(match c {
        '`' => "`...` (command substitution)",
        ';' => "`;` (a command list)",
        '|' => "`|` (a pipe)",
        '&' => "`&` (a background job or a command list)",
        '<' | '>' => "a redirection (`<`, `>`)",
        '(' | ')' => "`(` or `)` (a subshell or a function)",
        '*' | '?' | '[' => "an unquoted glob character (`*`, `?`, `[`)",
        '{' => "an unquoted `{` (brace expansion)",
        '~' => "an unquoted `~` (tilde expansion)",
        '#' if !in_word => "a comment (`#` starting a word)",
        _ => return None,
    })
}

fn unsupported(what: &str, i: usize) -> String {
    format!(
        "{what} at character {} is not supported (rayhead runs no shell; quote what is meant literally)",
        i + 1
    )
}

/// Expands the `$` at `chars[i]` into `cur`; returns the index after it.
fn expand(
    chars: &[char],
    i: usize,
    quoting: Quoting,
    env: &dyn Env,
    cur: &mut String,
    out: &mut Words,
) -> Result<usize, String> {
    let name_start = |c: char| c.is_ascii_alphabetic() || c == '_';
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let (name, next): (String, usize) = match chars.get(i + 1) {
        Some('{') => {
            let close = chars[i + 2..]
                .iter()
                .position(|c| *c == '}')
                .ok_or_else(|| format!("unterminated ${{ at character {}", i + 1))?;
            let name: String = chars[i + 2..i + 2 + close].iter().collect();
            let valid = name.starts_with(name_start) && name.chars().all(name_char);
            if !valid || name == "_" {
                return Err(unsupported(
                    "`${...}` with anything but a variable name (only ${NAME} is supported)",
                    i,
                ));
            }
            (name, i + 3 + close)
        }
        Some(&c) if name_start(c) => {
            let len = chars[i + 1..].iter().take_while(|c| name_char(**c)).count();
            let name: String = chars[i + 1..i + 1 + len].iter().collect();
            if name == "_" {
                return Err(unsupported("`$_` (a special parameter)", i));
            }
            (name, i + 1 + len)
        }
        Some('(') => return Err(unsupported("`$(...)` (command substitution)", i)),
        Some('[') => return Err(unsupported("`$[...]` (arithmetic)", i)),
        Some('\'') if quoting == Quoting::Bare => {
            return Err(unsupported("`$'...'` (ANSI-C quoting)", i))
        }
        Some('"') if quoting == Quoting::Bare => {
            return Err(unsupported("`$\"...\"` (locale quoting)", i))
        }
        Some(c) if c.is_ascii_digit() || "@*#?-$!".contains(*c) => {
            return Err(unsupported(
                "a positional or special parameter (`$1`, `$@`, `$$`, ...)",
                i,
            ))
        }
        // Anything else leaves the `$` as it is, as in bash: `$`, `a$`, `$/`.
        _ => {
            cur.push('$');
            return Ok(i + 1);
        }
    };
    match env.var(&name) {
        Ok(Some(v)) => cur.push_str(&v),
        Ok(None) => {
            if !out.unset.contains(&name) {
                out.unset.push(name);
            }
        }
        Err(e) => return Err(e.to_string()),
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(text: &str) -> Vec<String> {
        let env = [("A", "a"), ("P", "p w*$x"), ("E", "")];
        words(text, &env).unwrap().argv
    }

    fn err(text: &str) -> String {
        words(text, &[("A", "a")]).unwrap_err()
    }

    #[test]
    fn quotes_and_expansions_like_bash() {
        assert_eq!(
            argv("a 'b c' \"d \\\"e\\\"\" f\\ g"),
            ["a", "b c", "d \"e\"", "f g"]
        );
        assert_eq!(
            argv("'--x=$A' --y=\\$A \"--z=$A\" --w=${A}b"),
            ["--x=$A", "--y=$A", "--z=a", "--w=ab"]
        );
        // No field splitting of an unquoted expansion: one argument.
        assert_eq!(argv("--p=$P $P"), ["--p=p w*$x", "p w*$x"]);
        // An unquoted word that expands to nothing is no word; quoted, it is.
        assert_eq!(argv("a $U $E ${U} \"\" $U'' b"), ["a", "", "", "b"]);
        assert_eq!(
            argv("$ a$ \"$\" $/ \"$'\" \\"),
            ["$", "a$", "$", "$/", "$'", "\\"]
        );
        assert_eq!(argv("a\\\nb \"c\\\nd\" 'e\\\nf'"), ["ab", "cd", "e\\\nf"]);
        // Continuations go before names are read, as in bash; an escaped
        // backslash before a newline is no continuation.
        assert_eq!(
            argv("$\\\nA ${\\\nA} \"$A\\\nA\" x\\\\"),
            ["a", "a", "", "x\\"]
        );
        assert!(words("a\\\\\nb", &[("A", "a")]).is_err());
        assert_eq!(argv("  a\r\u{a0}b\t\\# \n\n "), ["a\r\u{a0}b", "#"]);
        assert_eq!(argv("a#b }"), ["a#b", "}"]);
        // Huge inputs end (each character is looked at about once).
        for unit in ["\n", " \n", "$A", "'x'", "\\\n", "\"$A\""] {
            let _ = argv(&format!("a {}", unit.repeat(200_000)));
        }
        let w = words("$U ${V} $U", &[("A", "a")]).unwrap();
        assert_eq!(w.unset, ["U", "V"]);
    }

    #[test]
    fn unsupported_constructs_are_named() {
        for (text, what) in [
            ("a $(id)", "$(...)"),
            ("a `id`", "command substitution"),
            ("a \"`id`\"", "command substitution"),
            ("a $((1+1))", "$(...)"),
            ("a $[1]", "arithmetic"),
            ("a; b", "`;`"),
            ("a | b", "pipe"),
            ("a && b", "`&`"),
            ("a > f", "redirection"),
            ("a *", "glob"),
            ("a x?", "glob"),
            ("a [ab]", "glob"),
            ("a {b,c}", "brace"),
            ("a ~", "tilde"),
            ("a #c", "comment"),
            ("a ${A:-x}", "${...}"),
            ("a ${#A}", "${...}"),
            ("a ${}", "${...}"),
            ("a \"${A/x/y}\"", "${...}"),
            ("a $1", "positional"),
            ("a \"$@\"", "positional"),
            ("a $$", "positional"),
            ("a $_", "$_"),
            ("a $'x'", "ANSI-C"),
            ("a $\"x\"", "locale"),
            ("a\nb", "newline"),
            ("a 'b", "unterminated single"),
            ("a \"b", "unterminated double"),
            ("a \"b\\", "unterminated double"),
            ("a ${A", "unterminated ${"),
            ("a \0", "NUL"),
        ] {
            let e = err(text);
            assert!(e.contains(what), "{text:?}: {e}");
        }
        // The command is never quoted back: it may hold a password.
        let e = err("ray start --redis-password=hunter2 $(x)");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
