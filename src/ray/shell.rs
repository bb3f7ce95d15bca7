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
    let mut r = Reader {
        chars: &chars,
        env,
        out: Words {
            argv: Vec::new(),
            unset: Vec::new(),
        },
        cur: String::new(),
        in_word: false,
        quoted: false,
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i = match c {
            ' ' | '\t' => {
                r.end_word();
                i + 1
            }
            '\n' => {
                r.end_word();
                return r.end_at_newline(i);
            }
            '\'' => r.single_quoted(i)?,
            '"' => r.double_quoted(i)?,
            '\\' => {
                r.in_word = true;
                // bash keeps a trailing backslash.
                r.cur.push(chars.get(i + 1).copied().unwrap_or('\\'));
                i + 2
            }
            '$' => {
                r.in_word = true;
                r.expand(i, Quoting::Bare)?
            }
            '\0' => return Err(format!("a NUL character {}", at(i))),
            _ => {
                if let Some(what) = bare_construct(c, r.in_word) {
                    return Err(unsupported(what, i));
                }
                r.in_word = true;
                r.cur.push(c);
                i + 1
            }
        };
    }
    r.end_word();
    Ok(r.out)
}

/// The one pass's state, so that each quoting form can be read by its own
/// method: the words so far and the word being built.
struct Reader<'a> {
    chars: &'a [char],
    env: &'a dyn Env,
    out: Words,
    cur: String,
    /// A word has started (even if it may expand to nothing).
    in_word: bool,
    /// The word holds quotes, so it is kept even when empty (`""`).
    quoted: bool,
}

impl Reader<'_> {
    /// At a blank: the word so far is an argument, unless it is an unquoted
    /// word that expanded to nothing.
    fn end_word(&mut self) {
        if self.in_word && (self.quoted || !self.cur.is_empty()) {
            self.out.argv.push(std::mem::take(&mut self.cur));
        }
        self.cur.clear();
        self.in_word = false;
        self.quoted = false;
    }

    /// A newline ends the command, and only blanks may follow it: anything
    /// else is a second command, which bash would run and rayhead cannot.
    fn end_at_newline(self, i: usize) -> Result<Words, String> {
        if self.chars[i..]
            .iter()
            .any(|c| !matches!(c, ' ' | '\t' | '\n'))
        {
            return Err(format!(
                "a newline {} starts a second command; rayhead runs one `ray start`",
                at(i)
            ));
        }
        Ok(self.out)
    }

    /// `'...'` at `open`: everything up to the next `'` is literal. Returns
    /// the index after the closing quote.
    fn single_quoted(&mut self, open: usize) -> Result<usize, String> {
        self.in_word = true;
        self.quoted = true;
        let close = self.chars[open + 1..]
            .iter()
            .position(|c| *c == '\'')
            .ok_or_else(|| format!("unterminated single quote {}", at(open)))?;
        self.cur.extend(&self.chars[open + 1..open + 1 + close]);
        Ok(open + close + 2)
    }

    /// `"..."` at `open`: `$` expands, and a backslash escapes only `$`,
    /// `"`, `\\` and `` ` ``, as in bash. Returns the index after the closing quote.
    fn double_quoted(&mut self, open: usize) -> Result<usize, String> {
        self.in_word = true;
        self.quoted = true;
        let mut i = open + 1;
        loop {
            match self.chars.get(i) {
                None => return Err(format!("unterminated double quote {}", at(open))),
                Some('"') => return Ok(i + 1),
                Some('\\') => {
                    match self.chars.get(i + 1) {
                        Some(e @ ('$' | '"' | '\\' | '`')) => self.cur.push(*e),
                        Some(e) => {
                            self.cur.push('\\');
                            self.cur.push(*e);
                        }
                        None => return Err(format!("unterminated double quote {}", at(open))),
                    }
                    i += 2;
                }
                Some('$') => i = self.expand(i, Quoting::Double)?,
                Some('`') => return Err(unsupported("`...` (command substitution)", i)),
                Some(c) => {
                    self.cur.push(*c);
                    i += 1;
                }
            }
        }
    }
}

/// Where an error is, counted in characters of the joined text.
fn at(i: usize) -> String {
    format!("at character {}", i + 1)
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

impl Reader<'_> {
    /// Expands the `$` at `chars[i]` into the word; returns the index after it.
    fn expand(&mut self, i: usize, quoting: Quoting) -> Result<usize, String> {
        let chars = self.chars;
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
                self.cur.push('$');
                return Ok(i + 1);
            }
        };
        match self.env.var(&name) {
            Ok(Some(v)) => self.cur.push_str(&v),
            Ok(None) => {
                if !self.out.unset.contains(&name) {
                    self.out.unset.push(name);
                }
            }
            Err(e) => return Err(e.to_string()),
        }
        Ok(next)
    }
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
