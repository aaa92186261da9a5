//! Text → tree: the lexer (names resolved against the ones the config knows, so `boiler-1.temp`
//! is one name and `a-b` a subtraction) and a precedence-climbing parser.

use super::{BinOp, Expr, ExprError, Func, Kind, Parsed, UnOp};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Bool(bool),
    /// Index into the parse's names.
    Name(u16),
    Func(Func),
    Op(&'static str),
    Open,
    Close,
    Comma,
    End,
}

/// Operators, longest first so `<=` is not read as `<`.
const OPS: [&str; 18] = [
    "&&", "||", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "^", "!", "(", ")", ",",
];

/// Characters a name made of plain characters may hold (device ids often hold `-` and `.`).
fn name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')
}

struct Lexer<'a> {
    text: &'a str,
    at: usize,
    known: &'a dyn Fn(&str) -> bool,
    names: Vec<String>,
}

impl Lexer<'_> {
    fn name(&mut self, name: &str) -> Result<u16, ExprError> {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return Ok(i as u16);
        }
        if self.names.len() >= usize::from(u16::MAX) {
            return Err(ExprError::new(self.at, "too many names"));
        }
        self.names.push(name.to_string());
        Ok((self.names.len() - 1) as u16)
    }

    /// The next token and where it starts.
    fn next(&mut self) -> Result<(Tok, usize), ExprError> {
        let bytes = self.text.as_bytes();
        while self.at < bytes.len() && bytes[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
        let start = self.at;
        let Some(&c) = bytes.get(start) else {
            return Ok((Tok::End, start));
        };
        if c == b'`' {
            return self.quoted(start);
        }
        if name_char(c) && c != b'-' {
            if let Some(tok) = self.word(start)? {
                return Ok((tok, start));
            }
        }
        for op in OPS {
            if self.text[start..].starts_with(op) {
                self.at += op.len();
                let tok = match op {
                    "(" => Tok::Open,
                    ")" => Tok::Close,
                    "," => Tok::Comma,
                    _ => Tok::Op(op),
                };
                return Ok((tok, start));
            }
        }
        let shown = self.text[start..].chars().next().unwrap_or(' ');
        Err(ExprError::new(start, format!("unexpected `{shown}`")))
    }

    /// `` `any name` ``: a name with characters a plain one cannot hold.
    fn quoted(&mut self, start: usize) -> Result<(Tok, usize), ExprError> {
        let rest = &self.text[start + 1..];
        let Some(len) = rest.find('`') else {
            return Err(ExprError::new(start, "a name opened with ` is not closed"));
        };
        let name = &rest[..len];
        if !(self.known)(name) {
            return Err(ExprError::new(start, format!("unknown name `{name}`")));
        }
        self.at = start + len + 2;
        Ok((Tok::Name(self.name(name)?), start))
    }

    /// A name, a function, `true`/`false` or a number starting at `start`; `None` when it is
    /// none of these (an operator's character).
    fn word(&mut self, start: usize) -> Result<Option<Tok>, ExprError> {
        let bytes = self.text.as_bytes();
        let mut end = start;
        while end < bytes.len() && name_char(bytes[end]) {
            end += 1;
        }
        // The longest known name the run starts with: `boiler-1.temp-2` reads as the name
        // `boiler-1.temp` minus 2 when no point is called `boiler-1.temp-2`.
        let run = &self.text[start..end];
        let called = self.text[end..].trim_start().starts_with('(');
        if !called {
            // A name ends the run or is followed by a `-` (a subtraction): never by a letter.
            let ends = |l: usize| l == run.len() || run.as_bytes()[l] == b'-';
            if let Some(len) = (1..=run.len())
                .rev()
                .find(|&l| ends(l) && (self.known)(&run[..l]))
            {
                self.at = start + len;
                return Ok(Some(Tok::Name(self.name(&run[..len])?)));
            }
        }
        if bytes[start].is_ascii_digit() || bytes[start] == b'.' {
            return self.number(start).map(Some);
        }
        // A word: the run up to its first `-` (likely a subtraction) unless it names a device.
        let word_end = if run.contains('.') {
            run.len()
        } else {
            run.find('-').unwrap_or(run.len())
        };
        let word = &run[..word_end];
        self.at = start + word_end;
        if called {
            return match Func::parse(word) {
                Some(f) => Ok(Some(Tok::Func(f))),
                None => Err(ExprError::new(
                    start,
                    format!(
                        "unknown function `{word}` (there are min, max, abs, sqrt, round, clamp, if, avg)"
                    ),
                )),
            };
        }
        match word {
            "true" => Ok(Some(Tok::Bool(true))),
            "false" => Ok(Some(Tok::Bool(false))),
            _ => Err(ExprError::new(start, format!("unknown name `{word}`"))),
        }
    }

    /// A decimal number: `12`, `0.5`, `.5`, `1e-3`.
    fn number(&mut self, start: usize) -> Result<Tok, ExprError> {
        let bytes = self.text.as_bytes();
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'.') {
            end += 1;
        }
        if end < bytes.len() && matches!(bytes[end], b'e' | b'E') {
            let mut e = end + 1;
            if e < bytes.len() && matches!(bytes[e], b'+' | b'-') {
                e += 1;
            }
            if e < bytes.len() && bytes[e].is_ascii_digit() {
                while e < bytes.len() && bytes[e].is_ascii_digit() {
                    e += 1;
                }
                end = e;
            }
        }
        let text = &self.text[start..end];
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => {
                self.at = end;
                Ok(Tok::Num(x))
            }
            _ => Err(ExprError::new(start, format!("`{text}` is not a number"))),
        }
    }
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    tok: Tok,
    at: usize,
    /// Brackets, unary operators and `^` open inside each other this deep.
    depth: usize,
}

/// The longest expression: a formula is a line, and the parser and compiler recurse over its
/// tree, which a long enough text (from a dashboard request) would make deep enough to
/// overflow a thread's stack.
const MAX_LEN: usize = 1000;
/// The deepest nesting of brackets, unary operators and `^`.
const MAX_DEPTH: usize = 64;

/// Binding power of a binary operator (higher binds tighter), and whether it groups right.
fn binary(op: &str) -> Option<(BinOp, u8, bool)> {
    Some(match op {
        "||" => (BinOp::Or, 1, false),
        "&&" => (BinOp::And, 2, false),
        "==" => (BinOp::Eq, 3, false),
        "!=" => (BinOp::Ne, 3, false),
        "<" => (BinOp::Lt, 4, false),
        "<=" => (BinOp::Le, 4, false),
        ">" => (BinOp::Gt, 4, false),
        ">=" => (BinOp::Ge, 4, false),
        "+" => (BinOp::Add, 5, false),
        "-" => (BinOp::Sub, 5, false),
        "*" => (BinOp::Mul, 6, false),
        "/" => (BinOp::Div, 6, false),
        "%" => (BinOp::Rem, 6, false),
        // Above the unary minus: -2^2 is -4, as in mathematics.
        "^" => (BinOp::Pow, 8, true),
        _ => return None,
    })
}

/// The unary operators bind between `*` and `^`.
const UNARY: u8 = 7;

impl Parser<'_> {
    fn bump(&mut self) -> Result<(), ExprError> {
        (self.tok, self.at) = self.lexer.next()?;
        Ok(())
    }

    fn err(&self, message: impl Into<String>) -> ExprError {
        ExprError::new(self.at, message)
    }

    fn expr(&mut self, min: u8) -> Result<Expr, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("nested more than {MAX_DEPTH} deep")));
        }
        let e = self.expr_at_depth(min);
        self.depth -= 1;
        e
    }

    fn expr_at_depth(&mut self, min: u8) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        while let Tok::Op(op) = self.tok {
            let Some((bin, power, right)) = binary(op) else {
                break;
            };
            if power < min {
                break;
            }
            self.bump()?;
            let rhs = self.expr(if right { power } else { power + 1 })?;
            // Where its left side starts: a problem with the whole part points there.
            let start = left.at;
            left = Expr {
                kind: Kind::Binary(bin, Box::new(left), Box::new(rhs)),
                at: start,
            };
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        let at = self.at;
        let op = match self.tok {
            Tok::Op("-") => UnOp::Neg,
            Tok::Op("!") => UnOp::Not,
            _ => return self.primary(),
        };
        self.bump()?;
        let inner = self.expr(UNARY)?;
        Ok(Expr {
            kind: Kind::Unary(op, Box::new(inner)),
            at,
        })
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let at = self.at;
        let kind = match self.tok.clone() {
            Tok::Num(x) => Kind::Num(x),
            Tok::Bool(b) => Kind::Bool(b),
            Tok::Name(i) => Kind::Name(i),
            Tok::Open => {
                self.bump()?;
                let inner = self.expr(0)?;
                self.expect_close("(")?;
                // Problems with a bracketed part point at its bracket.
                return Ok(Expr { at, ..inner });
            }
            Tok::Func(f) => {
                self.bump()?;
                if self.tok != Tok::Open {
                    return Err(self.err(format!("`{}` needs `(`", f.name())));
                }
                self.bump()?;
                let mut args = Vec::new();
                if self.tok != Tok::Close {
                    loop {
                        args.push(self.expr(0)?);
                        if self.tok != Tok::Comma {
                            break;
                        }
                        self.bump()?;
                    }
                }
                self.expect_close(f.name())?;
                return Ok(Expr {
                    kind: Kind::Call(f, args),
                    at,
                });
            }
            Tok::End => return Err(self.err("the expression ends where a value was expected")),
            Tok::Close | Tok::Comma | Tok::Op(_) => {
                return Err(self.err("a value was expected here"));
            }
        };
        self.bump()?;
        Ok(Expr { kind, at })
    }

    fn expect_close(&mut self, what: &str) -> Result<(), ExprError> {
        if self.tok != Tok::Close {
            return Err(self.err(format!("`)` expected to close `{what}`")));
        }
        self.bump()
    }
}

/// Parses `text`; `known` says which names exist (a point of the expression's own device, or
/// `device.point`).
pub fn parse(text: &str, known: &dyn Fn(&str) -> bool) -> Result<Parsed, ExprError> {
    if text.len() > MAX_LEN {
        return Err(ExprError::new(
            MAX_LEN,
            format!("longer than {MAX_LEN} characters"),
        ));
    }
    let mut p = Parser {
        lexer: Lexer {
            text,
            at: 0,
            known,
            names: Vec::new(),
        },
        tok: Tok::End,
        at: 0,
        depth: 0,
    };
    p.bump()?;
    if p.tok == Tok::End {
        return Err(p.err("empty expression"));
    }
    let root = p.expr(0)?;
    if p.tok != Tok::End {
        return Err(p.err("an operator was expected here"));
    }
    Ok(Parsed {
        root,
        names: p.lexer.names,
    })
}
