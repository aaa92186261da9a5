//! The expression language of calculated points and `expr` rules: parsed once against the
//! names the config knows, checked for types, compiled to a small stack program that runs over
//! `f64` with no allocation.
//!
//! Our own rather than a general crate (evalexpr was measured, see BENCHMARKS.md): device ids
//! hold `-` and `.` (`boiler-1.gas_in`), which a general lexer reads as a subtraction; every
//! number is a float (evalexpr divides two integers as integers: `5 / 2` is 2, a wrong value for
//! a register that happens to hold an integer); `check-config` must name the column of a type
//! error and a constant division by zero before the gateway runs.

mod parse;

use std::fmt;

pub use parse::parse;

/// What an expression or a name gives: a number, or true/false.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Number,
    Bool,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Number => "a number",
            Ty::Bool => "true/false",
        }
    }
}

/// A problem in an expression: where (a byte offset into its text) and what.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    pub at: usize,
    pub message: String,
}

impl ExprError {
    fn new(at: usize, message: impl Into<String>) -> ExprError {
        ExprError {
            at,
            message: message.into(),
        }
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at column {})", self.message, self.at + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Pow,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Pow => "^",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Min,
    Max,
    Abs,
    Sqrt,
    Round,
    Clamp,
    If,
    Avg,
}

impl Func {
    fn parse(s: &str) -> Option<Func> {
        Some(match s {
            "min" => Func::Min,
            "max" => Func::Max,
            "abs" => Func::Abs,
            "sqrt" => Func::Sqrt,
            "round" => Func::Round,
            "clamp" => Func::Clamp,
            "if" => Func::If,
            "avg" => Func::Avg,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Func::Min => "min",
            Func::Max => "max",
            Func::Abs => "abs",
            Func::Sqrt => "sqrt",
            Func::Round => "round",
            Func::Clamp => "clamp",
            Func::If => "if",
            Func::Avg => "avg",
        }
    }

    /// How many arguments it takes, as (least, most).
    fn arity(self) -> (usize, usize) {
        match self {
            Func::Min | Func::Max | Func::Avg => (1, 255),
            Func::Abs | Func::Sqrt => (1, 1),
            Func::Round => (1, 2),
            Func::Clamp | Func::If => (3, 3),
        }
    }
}

/// A node of the parsed tree and where it starts in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    kind: Kind,
    at: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Num(f64),
    Bool(bool),
    /// Index into [`Parsed::names`].
    Name(u16),
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

/// A parsed expression and the distinct names it reads, in order of first use.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    root: Expr,
    pub names: Vec<String>,
}

/// One step of a compiled program (postfix).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Const(f64),
    /// The input at this index.
    Load(u16),
    Unary(UnOp),
    Binary(BinOp),
    Call(Func, u8),
}

/// A checked expression ready to run: inputs by index (its names' order), true as 1.0.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    ops: Vec<Op>,
    /// The deepest the stack gets.
    depth: usize,
    pub ty: Ty,
}

impl Parsed {
    /// Type-checks and compiles; `ty_of` gives each name's type by its index in
    /// [`Parsed::names`]. Every problem found, with its position.
    pub fn compile(&self, ty_of: &dyn Fn(usize) -> Ty) -> Result<Program, Vec<ExprError>> {
        let mut c = Compiler {
            ty_of,
            ops: Vec::new(),
            depth: 0,
            max_depth: 0,
            errors: Vec::new(),
        };
        let ty = c.node(&self.root);
        if c.errors.is_empty() {
            Ok(Program {
                ops: c.ops,
                depth: c.max_depth,
                ty,
            })
        } else {
            Err(c.errors)
        }
    }
}

struct Compiler<'a> {
    ty_of: &'a dyn Fn(usize) -> Ty,
    ops: Vec<Op>,
    depth: usize,
    max_depth: usize,
    errors: Vec<ExprError>,
}

impl Compiler<'_> {
    fn emit(&mut self, op: Op, pops: usize) {
        self.depth = self.depth + 1 - pops;
        self.max_depth = self.max_depth.max(self.depth);
        self.ops.push(op);
    }

    /// `e` must be of type `want`, else a problem saying what it is.
    fn want(&mut self, e: &Expr, got: Ty, want: Ty, what: &str) {
        if got != want {
            let message = format!("{what} needs {}, this is {}", want.name(), got.name());
            self.errors.push(ExprError::new(e.at, message));
        }
    }

    fn node(&mut self, e: &Expr) -> Ty {
        match &e.kind {
            Kind::Num(x) => {
                self.emit(Op::Const(*x), 0);
                Ty::Number
            }
            Kind::Bool(b) => {
                self.emit(Op::Const(f64::from(u8::from(*b))), 0);
                Ty::Bool
            }
            Kind::Name(i) => {
                self.emit(Op::Load(*i), 0);
                (self.ty_of)(usize::from(*i))
            }
            Kind::Unary(op, inner) => {
                let t = self.node(inner);
                let (want, what) = match op {
                    UnOp::Neg => (Ty::Number, "`-`"),
                    UnOp::Not => (Ty::Bool, "`!`"),
                };
                self.want(inner, t, want, what);
                self.emit(Op::Unary(*op), 1);
                want
            }
            Kind::Binary(op, l, r) => self.binary(*op, l, r),
            Kind::Call(f, args) => self.call(e, *f, args),
        }
    }

    fn binary(&mut self, op: BinOp, l: &Expr, r: &Expr) -> Ty {
        let (lt, rt) = (self.node(l), self.node(r));
        let what = format!("`{}`", op.symbol());
        let ty = match op {
            BinOp::And | BinOp::Or => {
                self.want(l, lt, Ty::Bool, &what);
                self.want(r, rt, Ty::Bool, &what);
                Ty::Bool
            }
            BinOp::Eq | BinOp::Ne => {
                self.want(r, rt, lt, &what);
                Ty::Bool
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                self.want(l, lt, Ty::Number, &what);
                self.want(r, rt, Ty::Number, &what);
                Ty::Bool
            }
            _ => {
                self.want(l, lt, Ty::Number, &what);
                self.want(r, rt, Ty::Number, &what);
                Ty::Number
            }
        };
        if matches!(op, BinOp::Div | BinOp::Rem) && constant(r) == Some(0.0) {
            self.errors.push(ExprError {
                at: r.at,
                message: format!(
                    "division by zero: the right side of `{}` is always 0",
                    op.symbol()
                ),
            });
        }
        self.emit(Op::Binary(op), 2);
        ty
    }

    fn call(&mut self, e: &Expr, f: Func, args: &[Expr]) -> Ty {
        let (least, most) = f.arity();
        if args.len() < least || args.len() > most {
            let takes = match (least, most) {
                (l, m) if l == m => format!("{l}"),
                (l, 255) => format!("at least {l}"),
                (l, m) => format!("{l} or {m}"),
            };
            let message = format!("`{}` takes {takes} arguments, not {}", f.name(), args.len());
            self.errors.push(ExprError::new(e.at, message));
        }
        let types: Vec<Ty> = args.iter().map(|a| self.node(a)).collect();
        let what = format!("`{}`", f.name());
        let ty = if f == Func::If {
            if let (Some(c), Some(&t)) = (args.first(), types.first()) {
                self.want(c, t, Ty::Bool, "the condition of `if`");
            }
            let branch = types.get(1).copied().unwrap_or(Ty::Number);
            if let (Some(b), Some(&t)) = (args.get(2), types.get(2)) {
                self.want(b, t, branch, "the other branch of `if`");
            }
            branch
        } else {
            for (a, &t) in args.iter().zip(&types) {
                self.want(a, t, Ty::Number, &what);
            }
            Ty::Number
        };
        self.emit(Op::Call(f, args.len() as u8), args.len());
        ty
    }
}

/// The value of a part with no names in it (`10 - 2 * 5`), `None` when it reads a name.
fn constant(e: &Expr) -> Option<f64> {
    fn reads_a_name(e: &Expr) -> bool {
        match &e.kind {
            Kind::Name(_) => true,
            Kind::Num(_) | Kind::Bool(_) => false,
            Kind::Unary(_, a) => reads_a_name(a),
            Kind::Binary(_, a, b) => reads_a_name(a) || reads_a_name(b),
            Kind::Call(_, args) => args.iter().any(reads_a_name),
        }
    }
    if reads_a_name(e) {
        return None;
    }
    let parsed = Parsed {
        root: e.clone(),
        names: Vec::new(),
    };
    let program = parsed.compile(&|_| Ty::Number).ok()?;
    Some(program.eval(&[], &mut Vec::new()))
}

impl Program {
    /// Runs the program over `inputs` (its names' values in order; true as 1.0); `stack` is
    /// scratch space kept by the caller between runs. A non-finite result (a division by a
    /// zero input, `sqrt(-1)`) is the caller's to judge.
    pub fn eval(&self, inputs: &[f64], stack: &mut Vec<f64>) -> f64 {
        stack.clear();
        stack.reserve(self.depth);
        for op in &self.ops {
            match *op {
                Op::Const(x) => stack.push(x),
                Op::Load(i) => stack.push(inputs.get(usize::from(i)).copied().unwrap_or(f64::NAN)),
                Op::Unary(u) => {
                    let a = stack.pop().unwrap_or(f64::NAN);
                    stack.push(match u {
                        UnOp::Neg => -a,
                        UnOp::Not => truth(a == 0.0),
                    });
                }
                Op::Binary(b) => {
                    let r = stack.pop().unwrap_or(f64::NAN);
                    let l = stack.pop().unwrap_or(f64::NAN);
                    stack.push(binary(b, l, r));
                }
                Op::Call(f, n) => {
                    let at = stack.len().saturating_sub(usize::from(n));
                    let x = call(f, &stack[at..]);
                    stack.truncate(at);
                    stack.push(x);
                }
            }
        }
        stack.pop().unwrap_or(f64::NAN)
    }
}

fn truth(b: bool) -> f64 {
    f64::from(u8::from(b))
}

fn binary(op: BinOp, l: f64, r: f64) -> f64 {
    match op {
        BinOp::Add => l + r,
        BinOp::Sub => l - r,
        BinOp::Mul => l * r,
        BinOp::Div => l / r,
        BinOp::Rem => l % r,
        BinOp::Pow => l.powf(r),
        BinOp::Lt => truth(l < r),
        BinOp::Le => truth(l <= r),
        BinOp::Gt => truth(l > r),
        BinOp::Ge => truth(l >= r),
        #[allow(clippy::float_cmp)] // equality as written: `mode == 3`
        BinOp::Eq => truth(l == r),
        #[allow(clippy::float_cmp)]
        BinOp::Ne => truth(l != r),
        BinOp::And => truth(l != 0.0 && r != 0.0),
        BinOp::Or => truth(l != 0.0 || r != 0.0),
    }
}

/// min/max that keep a NaN (`f64::min` drops it, which would hide `sqrt(-1)` from the
/// non-finite check).
fn pick(a: f64, b: f64, keep_a: bool) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else if keep_a {
        a
    } else {
        b
    }
}

fn call(f: Func, args: &[f64]) -> f64 {
    let arg = |i: usize| args.get(i).copied().unwrap_or(f64::NAN);
    match f {
        Func::Min => args.iter().copied().reduce(|a, b| pick(a, b, a <= b)),
        Func::Max => args.iter().copied().reduce(|a, b| pick(a, b, a >= b)),
        Func::Avg => (!args.is_empty()).then(|| args.iter().sum::<f64>() / args.len() as f64),
        Func::Abs => Some(arg(0).abs()),
        Func::Sqrt => Some(arg(0).sqrt()),
        Func::Round if args.len() == 2 => {
            let scale = 10f64.powi(arg(1).round() as i32);
            Some((arg(0) * scale).round() / scale)
        }
        Func::Round => Some(arg(0).round()),
        // Not `f64::clamp`, which panics when the bounds cross: crossed bounds are no value.
        Func::Clamp if arg(1) > arg(2) => Some(f64::NAN),
        Func::Clamp => {
            let low = pick(arg(0), arg(1), arg(0) >= arg(1));
            Some(pick(low, arg(2), low <= arg(2)))
        }
        Func::If => Some(if arg(0) == 0.0 { arg(2) } else { arg(1) }),
    }
    .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests;
